"""A running OpenAI-compatible server as a backend, e.g. `vllm serve BASE --enable-lora --lora-modules NAME=PATH`.

With `openai_load_adapters`, the backend loads its adapters into a vLLM server itself (`/v1/load_lora_adapter`,
under names made of their contents), after checking that the server serves the weights the adapters were trained
against: `survlm serve` starts such a server once, and every generating stage then shares its engine instead of
starting its own.

The constraint goes as OpenAI's `response_format` json_schema (any compatible server; the server picks the
separators, and vllm 0.24 picks spaced ones) or, with `openai_constraint: vllm_grammar`, as the compact grammar
itself in vLLM's `structured_outputs` request field, decoding with exactly the hf/vllm backends' grammar."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from .base import Backend, Generation, Request

OPENAI_CONSTRAINTS = ("json_schema", "vllm_grammar")
TOKEN_ID = "token_id:"   # how a vLLM server writes a token asked for as its id (`return_tokens_as_token_ids`)


class OpenAIBackendError(RuntimeError):
    """A request the server refused, or could not be reached for; the message is one line."""


def wait_until_serving(base_url: str, server=None, timeout_s: float = 600.0, poll_s: float = 2.0) -> float:
    """Seconds until the server at `base_url` (".../v1") lists its models. `server`: the server's process
    (`subprocess.Popen`) where the caller started it, so that its end is noticed at once. OpenAIBackendError when
    it ends first or `timeout_s` passes."""
    import urllib.request

    t0 = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=2)
            return time.monotonic() - t0
        except OSError:
            if server is not None and server.poll() is not None:
                raise OpenAIBackendError(f"the server at {base_url} ended before it answered") from None
            if time.monotonic() - t0 > timeout_s:
                raise OpenAIBackendError(f"the server at {base_url} did not answer in {timeout_s:.0f} s") from None
            time.sleep(poll_s)


class OpenAIBackend(Backend):
    """Adapters are addressed by their served names (the keys of `adapters`; paths are informational), or with
    `openai_load_adapters` loaded from their paths under names made of their contents. Requests
    run `batch_size` at a time with retries and exponential backoff. The server formats the chat itself, so an
    unconstrained answer is not primed with its opening."""

    name = "openai"
    primes_answer = False

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
        # what only a vLLM server takes: our grammar in the request, adapters loaded at run time
        self.vllm_server = settings.openai_constraint == "vllm_grammar" or settings.openai_load_adapters
        self.served_names = {name: name for name in self.adapters}   # adapter -> the model name requests carry
        if settings.openai_load_adapters:
            self._load_adapters()

    def _load_adapters(self) -> None:
        """Check the server's base, then load each adapter not loaded yet. An adapter's served name is its
        content digest: a name stands for one set of weights, so an adapter loaded by an earlier stage (or
        run) is used as it is, and a retrained one gets a new name instead of replacing weights in use. The
        server reads an adapter again from its path whenever it drops it from its cache, so one whose path no
        longer holds its weights (deleted, or retrained in place) is loaded again from this one."""
        from ..loading import adapter_digest, served_base

        url = self.settings.openai_base_url.rstrip("/")
        self.quantization = self.settings.base_quantization(self.adapters)
        want = served_base(self.base_dir, self.quantization, self.settings.nf4_serving, make=False)
        models = self._call(f"{url}/models")["data"]
        bases = [m for m in models if not m.get("parent")]
        if not bases or Path(str(bases[0].get("root"))).resolve() != Path(want).resolve():
            raise OpenAIBackendError(
                f"openai backend: {url} serves {bases[0].get('root') if bases else 'no base model'}, but these "
                f"adapters ({self.quantization} base) need {want}: start the server with `survlm serve`")
        self.model_name = self.settings.openai_model or bases[0]["id"]
        loaded = {m["id"]: m.get("root") for m in models if m.get("parent")}
        for name, path in self.adapters.items():
            digest = adapter_digest(path)
            served = f"survlm-{digest}"
            was = loaded.get(served)
            if was is None or not Path(was).is_dir() or adapter_digest(was) != digest:
                # new, or the path it was loaded from no longer holds these weights: load them from this one
                loaded[served] = str(Path(path).resolve())
                self._call(f"{url}/load_lora_adapter",
                           {"lora_name": served, "lora_path": loaded[served], "load_inplace": was is not None})
            self.served_names[name] = served

    def _call(self, url: str, body: dict | None = None):
        """One request of the adapter-loading API (GET, or POST with a JSON body); its failure as one line."""
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'EMPTY')}",
                   "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                        timeout=self.settings.openai_timeout_s) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and url.endswith("/load_lora_adapter"):
                raise OpenAIBackendError(f"openai backend: {url} is not served: the server loads no adapters at "
                                         "run time (start it with `survlm serve`, or with "
                                         "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)") from None
            raise OpenAIBackendError(f"openai backend: {url} answered {exc.code}: "
                                     f"{_first_line(exc.read().decode(errors='replace'))}") from None
        except OSError as exc:   # connection refused, timeout
            raise OpenAIBackendError(f"openai backend: {url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _answer(self, requests: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        if any(r.decoding.strategy == "beam" for r in requests):
            raise ValueError("the openai backend has no beam search; use vllm or hf")
        pool = ThreadPoolExecutor(max_workers=max(1, int(self.settings.batch_size)))
        try:
            futures = {pool.submit(self._one, r): r.index for r in requests}
            for done in as_completed(futures):
                yield futures[done], done.result()
        finally:   # a failed request, or a caller that stopped early: send nothing more
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, request: Request) -> list[Generation]:
        import openai

        decoding = request.decoding
        model = self.served_names[request.adapter] if request.adapter else self.model_name
        kw: dict[str, Any] = dict(model=model, messages=request.messages, max_tokens=decoding.max_new_tokens,
                                  seed=decoding.seed)
        extra: dict[str, Any] = {}
        if self.settings.openai_logprobs:
            kw["logprobs"] = True
            if self.vllm_server:   # token ids, not texts: a token holding part of a character has no text
                extra["return_tokens_as_token_ids"] = True
        if decoding.strategy == "greedy":
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=decoding.temperature, top_p=decoding.top_p, n=decoding.n)
        if decoding.constrained and self.settings.openai_constraint == "vllm_grammar":
            extra["structured_outputs"] = {"grammar": self.grammar_text}
        elif decoding.constrained:
            kw["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "extraction", "schema": self.json_schema}}
        if extra:
            kw["extra_body"] = extra
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
                           round(latency, 4), c.finish_reason, *self._logprobs(c)) for c in resp.choices]

    def _logprobs(self, choice) -> tuple[list[str] | None, list[float] | None]:
        """Each generated token's text and log-probability; the texts spell the answer, which is what field
        confidences are read against."""
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if not content:
            return None, None
        text, logprobs = choice.message.content or "", [float(t.logprob) for t in content]
        if all(t.token.startswith(TOKEN_ID) for t in content):   # token ids: decoded as the other backends do
            return self.token_texts([int(t.token[len(TOKEN_ID):]) for t in content], text), logprobs
        tokens = [t.token for t in content]
        # a server may list the stop token (`<|im_end|>`) that the text leaves out; a token that holds part of
        # a character comes as `\ufffd`, and then the tokens no longer spell the text (no confidences)
        if len(tokens) > 1 and "".join(tokens[:-1]) == text:
            tokens, logprobs = tokens[:-1], logprobs[:-1]
        return tokens, logprobs


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:200]
