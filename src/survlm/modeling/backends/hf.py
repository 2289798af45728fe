"""transformers `generate` as a backend: the base model with PEFT adapters switched per call or per row (never
merged), the compact grammar as an xgrammar logits processor, and each chosen token's log-probability read after
the grammar's mask (as vLLM reports it)."""
from __future__ import annotations

import time
from typing import Any, Iterator

from .base import Backend, Decoding, Generation, Request, batches, grouped

BASE_ROW = "__base__"   # PEFT's `adapter_names` entry for a row without adapter


class HFBackend(Backend):
    """`batch_size` prompts at a time; in each batch, the greedy and sampled prompts of one length limit and grammar
    share one `generate` call, whatever their adapters: one adapter is set for the call, several are routed per row
    (PEFT `adapter_names`). Beam prompts take one call per adapter and decoding."""

    name = "hf"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        import torch

        from ..loading import load_base, pick_device

        self.device = pick_device()
        # the 4-bit base the adapters were trained on (QLoRA), or the plain base
        self.quantization = self.settings.base_quantization(self.adapters)
        model = load_base(self.base_dir, self.quantization, self.device)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(model, self.adapters[names[0]], adapter_name=names[0],
                                              is_trainable=False)
            for name in names[1:]:
                model.load_adapter(self.adapters[name], adapter_name=name, is_trainable=False)
        model.config.use_cache = True
        self.model = model.eval()
        self._torch = torch
        self._grammar = None
        # On CPU a dynamic KV cache grows by copying every layer's keys and values at each step; a static one,
        # sized for prompt + max_new_tokens, is written in place (0.93x the time, the same answers: BENCHMARKS.md).
        # On a GPU the copy is cheap and a static cache would hold the longest answer's memory from the first step.
        self.cache_implementation = "static" if self.device == "cpu" else None

    def _compiled_grammar(self):
        if self._grammar is None:
            import xgrammar as xgr

            vocab = self.model.config.vocab_size if hasattr(self.model.config, "vocab_size") else len(self.tokenizer)
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
            self._grammar = xgr.GrammarCompiler(info).compile_grammar(self.grammar_text)
        return self._grammar

    def _answer(self, requests: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        for batch in batches(requests, self.settings.batch_size):
            beams = [r for r in batch if r.decoding.strategy == "beam"]
            for group in grouped(beams, lambda r: (r.adapter, r.decoding)):
                yield from zip((r.index for r in group), self._beam(group))
            # greedy and sampled prompts of one length limit and grammar share a call: a sampled prompt takes one
            # row per completion, and its rows draw their own tokens (_RowSampler)
            rest = [r for r in batch if r.decoding.strategy != "beam"]
            for group in grouped(rest, lambda r: (r.decoding.max_new_tokens, r.decoding.uses_constraint)):
                yield from self._one_call(group)

    def _one_call(self, group: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        rows = [(r, j) for r in group for j in range(r.decoding.n if r.decoding.strategy == "sample" else 1)]
        names = {r.adapter for r, _ in rows}
        # one adapter for the whole call is set on the model; several are routed per row (PEFT `adapter_names`)
        adapter = [r.adapter or BASE_ROW for r, _ in rows] if len(names) > 1 else names.pop()
        sampler = _RowSampler([(k, r.decoding, j) for k, (r, j) in enumerate(rows) if r.decoding.strategy == "sample"])
        gens = self._generate([r for r, _ in rows], adapter, sampler, prompts=len(group))
        by_request: dict[int, list[Generation]] = {}
        for (r, _), gen in zip(rows, gens):
            by_request.setdefault(r.index, []).append(gen)
        yield from by_request.items()

    def _beam(self, group: list[Request]) -> list[list[Generation]]:
        return [[gen] for gen in self._generate(group, group[0].adapter, None, prompts=len(group))]

    def _generate(self, rows: list[Request], adapter: str | None | list[str], sampler: _RowSampler | None,
                  prompts: int) -> list[Generation]:
        """One `generate` call, one sequence a row; `adapter`: one name / None, or one PEFT adapter name per row
        (BASE_ROW = no adapter). Beam rows share one decoding; any other call decodes greedily, and `sampler` draws
        the sampled rows' tokens. Each answer's latency is the call's time per prompt (`prompts`)."""
        import contextlib

        torch = self._torch
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: each row continues its own prompt
        decoding = rows[0].decoding
        per_row = isinstance(adapter, list)
        if not per_row and adapter is not None:
            self.model.set_adapter(adapter)
        ctx = (self.model.disable_adapter() if (adapter is None and self.adapters and not per_row)
               else contextlib.nullcontext())
        texts = [self.prompt_text(r.messages, r.decoding) for r in rows]
        kw: dict[str, Any] = dict(max_new_tokens=decoding.max_new_tokens, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, do_sample=False)
        if self.cache_implementation:
            kw["cache_implementation"] = self.cache_implementation
        if per_row:
            kw["adapter_names"] = adapter
        beam = decoding.strategy == "beam"
        kw["num_beams"] = decoding.beam_width if beam else 1
        kw["logits_processor"] = []
        if decoding.uses_constraint:
            import xgrammar as xgr

            # one matcher per row; a processor instance serves one generate call only
            kw["logits_processor"].append(xgr.contrib.hf.LogitsProcessor(self._compiled_grammar()))
        recorder = None if beam else _ChosenLogprobs(torch)
        if recorder is not None:   # after the grammar's mask and before any draw, as vLLM reports them
            kw["logits_processor"].append(recorder)
        if sampler is not None and sampler.rows:
            kw["logits_processor"].append(sampler)
        with ctx, torch.inference_mode():
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            t0 = time.perf_counter()
            gen = self.model.generate(**enc, **kw)
            latency = round((time.perf_counter() - t0) / prompts, 4)
        new = gen[:, enc["input_ids"].shape[1]:]
        chosen = recorder.finish(new) if recorder is not None else None
        result = []
        for i in range(len(texts)):
            n_prompt = int(enc["attention_mask"][i].sum())
            ids = new[i]
            stop = ((ids == tok.eos_token_id) | (ids == tok.pad_token_id)).nonzero()
            end = int(stop[0, 0]) if len(stop) else len(ids)
            text = tok.decode(ids[:end], skip_special_tokens=True)
            pieces = logprobs = None
            if chosen is not None:
                pieces = self.token_texts(ids[:end].tolist(), text)
                logprobs = chosen[i, :end].tolist()
            result.append(Generation(text, n_prompt, end, latency, "stop" if len(stop) else "length", pieces,
                                     logprobs))
        return result

    def close(self):
        self.__dict__.pop("model", None)


class _ChosenLogprobs:
    """A transformers logits processor that keeps the log-probability of each token `generate` chooses.

    At step t it sees the token chosen at step t-1 as the last input id, so it holds one step's log-softmax at a
    time; `finish` adds the last step's."""

    def __init__(self, torch):
        self.torch = torch
        self.previous = None
        self.chosen: list = []

    def __call__(self, input_ids, scores):
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = self.torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_ids):
        """(rows, generated tokens) log-probabilities, aligned with `new_ids` (0 after a row's end)."""
        torch = self.torch
        steps = list(self.chosen)
        if self.previous is not None and new_ids.shape[1] > len(steps):
            steps.append(self.previous.gather(1, new_ids[:, len(steps):len(steps) + 1]).squeeze(1))
        if not steps:
            return torch.zeros(new_ids.shape, dtype=torch.float32)
        out = torch.stack(steps, dim=1).cpu()
        return out[:, :new_ids.shape[1]]


class _RowSampler:
    """Draws the sampled rows' tokens inside a greedy `generate` call, so that greedy and sampled prompts share
    one call: at each step a sampled row's logits (after the grammar's mask) are scaled by its temperature, cut to
    its top-p mass (vLLM's rule, and as vLLM no top-k), and one token is drawn with the row's own generator, seeded
    from its decoding's seed and its completion's number; every other token is then ruled out, so the greedy
    choice is the draw. A row's tokens thus depend on its own prompt and seed alone, not on the rows beside it
    (as a seeded vLLM request's)."""

    def __init__(self, rows: list[tuple[int, Decoding, int]]):
        # (row in the call, its decoding, which of the prompt's completions); a temperature under 1e-5 is greedy,
        # as in vLLM (dividing by it would overflow)
        self.rows = [(k, d, j) for k, d, j in rows if d.temperature >= 1e-5]
        self.generators: list | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed((d.seed * 1_000_003 + j) % 2**63)
                               for _, d, j in self.rows]
        idx = torch.tensor([k for k, _, _ in self.rows], device=scores.device)
        temperature = torch.tensor([d.temperature for _, d, _ in self.rows], device=scores.device)
        top_p = torch.tensor([d.top_p for _, d, _ in self.rows], device=scores.device)
        probs = torch.softmax(scores[idx].float() / temperature[:, None], dim=-1)
        ranked, order = probs.sort(dim=-1, descending=True, stable=True)
        # a token goes when the tokens ranked above it already hold top_p of the mass; the first always stays
        ranked[(ranked.cumsum(dim=-1) - ranked) >= top_p[:, None]] = 0.0
        drawn = torch.stack([order[i, torch.multinomial(ranked[i], 1, generator=g)]
                             for i, g in enumerate(self.generators)]).squeeze(1)
        keep = scores[idx, drawn]
        scores[idx] = float("-inf")
        scores[idx, drawn] = keep
        return scores
