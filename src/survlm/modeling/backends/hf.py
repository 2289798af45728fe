"""transformers `generate` as a backend: the base model with PEFT adapters switched per call or per row (never
merged), the compact grammar as an xgrammar logits processor, and each chosen token's log-probability read after
the grammar's mask (as vLLM reports it)."""
from __future__ import annotations

import time
from typing import Any, Iterator

from .base import Backend, Generation, Request, batches, grouped

BASE_ROW = "__base__"   # PEFT's `adapter_names` entry for a row without adapter


class HFBackend(Backend):
    """`batch_size` prompts at a time; in each batch, prompts with different adapters share one `generate` call
    (PEFT `adapter_names`) when every one asks for a single greedy or sampled sequence, else one call per adapter
    and decoding. Every call starts from the decoding's seed."""

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
            # PEFT's per-row adapters take one sequence a row
            per_row = bool(self.adapters) and all(r.decoding.strategy != "beam" and r.decoding.n == 1 for r in batch)
            for group in grouped(batch, (lambda r: r.decoding) if per_row else (lambda r: (r.adapter, r.decoding))):
                adapter = [r.adapter or BASE_ROW for r in group] if per_row else group[0].adapter
                yield from zip((r.index for r in group), self._generate(group, adapter))

    def _generate(self, group: list[Request], adapter: str | None | list[str]) -> list[list[Generation]]:
        """One `generate` call for requests of one decoding; `adapter`: one name / None, or one PEFT adapter name
        per request (BASE_ROW = no adapter)."""
        import contextlib

        torch = self._torch
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: each row continues its own prompt
        decoding = group[0].decoding
        per_row = isinstance(adapter, list)
        if not per_row and adapter is not None:
            self.model.set_adapter(adapter)
        ctx = (self.model.disable_adapter() if (adapter is None and self.adapters and not per_row)
               else contextlib.nullcontext())
        torch.manual_seed(decoding.seed)
        texts = [self.prompt_text(r.messages, decoding) for r in group]
        kw: dict[str, Any] = dict(max_new_tokens=decoding.max_new_tokens, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
        if self.cache_implementation:
            kw["cache_implementation"] = self.cache_implementation
        if per_row:
            kw["adapter_names"] = adapter
        if decoding.strategy == "greedy":
            kw.update(do_sample=False, num_beams=1)
        elif decoding.strategy == "sample":
            kw.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p,
                      num_return_sequences=decoding.n)
        else:
            kw.update(do_sample=False, num_beams=decoding.beam_width)
        kw["logits_processor"] = []
        if decoding.uses_constraint:
            import xgrammar as xgr

            # one matcher per returned sequence; a processor instance serves one generate call only
            kw["logits_processor"].append(xgr.contrib.hf.LogitsProcessor(self._compiled_grammar()))
        recorder = _ChosenLogprobs(torch)   # last: after the grammar's mask, as vLLM reports them
        kw["logits_processor"].append(recorder)
        with ctx, torch.inference_mode():
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            t0 = time.perf_counter()
            gen = self.model.generate(**enc, **kw)
            latency = round((time.perf_counter() - t0) / len(texts), 4)
        new = gen[:, enc["input_ids"].shape[1]:]
        chosen = recorder.finish(new) if decoding.strategy != "beam" else None
        per = decoding.n if decoding.strategy == "sample" else 1
        result = []
        for i in range(len(texts)):
            n_prompt = int(enc["attention_mask"][i].sum())
            row = []
            for j in range(per):
                ids = new[i * per + j]
                stop = ((ids == tok.eos_token_id) | (ids == tok.pad_token_id)).nonzero()
                end = int(stop[0, 0]) if len(stop) else len(ids)
                text = tok.decode(ids[:end], skip_special_tokens=True)
                pieces = logprobs = None
                if chosen is not None:
                    pieces = self.token_texts(ids[:end].tolist(), text)
                    logprobs = chosen[i * per + j, :end].tolist()
                row.append(Generation(text, n_prompt, end, latency, "stop" if len(stop) else "length", pieces,
                                      logprobs))
            result.append(row)
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
