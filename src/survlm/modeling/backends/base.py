"""What every backend shares: the decoding settings, the answers, and the `Backend` base class that owns the one
generation contract (`generate`, and `stream`, which gives the same answers as they are ready).

The base class checks the request (one adapter name and one decoding per prompt, adapters that were loaded), formats
chat prompts with the base model's own tokenizer, and restores the answer's primed opening; a backend implements one
primitive, `_answer`, which generates for a list of checked requests.
"""
from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Hashable, Iterator

from ...config import BackendSettings

STRATEGIES = ("greedy", "sample", "beam")


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
    latency_s: float                # vllm, openai: the request's time from submission; hf: the batch's time per prompt
    finish_reason: str | None = None
    # the generated tokens as text (they concatenate to the end of `text`) and the log-probability the model
    # gave each one among the tokens the grammar allowed there: per-field confidence (survlm.confidence)
    token_texts: list[str] | None = None
    token_logprobs: list[float] | None = None


@dataclass(frozen=True)
class Request:
    """One prompt as a backend's `_answer` receives it: its position in the caller's list, checked settings."""
    index: int
    messages: list[dict]
    decoding: Decoding
    adapter: str | None             # a loaded adapter's name; None = the base model


def compact_json_grammar(json_schema: dict) -> str:
    """The JSON schema as an xgrammar EBNF grammar that allows no whitespace: `,` and `:` with nothing after.

    Our answers are trained compact. Handing vLLM the schema itself (StructuredOutputsParams(json=...)) is not
    enough: vllm 0.24's xgrammar backend turns `disable_any_whitespace` into json.dumps-style separators, `, `
    and `: `, forcing a token the model never saw at every key (measured on an H200: field accuracy 0.61 and
    every null field filled). A grammar pins the separators on every vLLM version, and hf uses the same one."""
    import xgrammar as xgr

    return str(xgr.Grammar.from_json_schema(json.dumps(json_schema), any_whitespace=False, separators=(",", ":")))


def batches(requests: list[Request], size: int) -> Iterator[list[Request]]:
    """`requests` in consecutive slices of `size` (at least 1)."""
    size = max(1, int(size))
    for start in range(0, len(requests), size):
        yield requests[start:start + size]


def grouped(requests: list[Request], key: Callable[[Request], Hashable]) -> list[list[Request]]:
    """`requests` grouped by `key`, groups in the order of their first request."""
    groups: dict[Hashable, list[Request]] = {}
    for r in requests:
        groups.setdefault(key(r), []).append(r)
    return list(groups.values())


class Backend:
    """Base class: chat formatting and token counting come from the base model's own tokenizer.

    Unconstrained decoding forces the answer's opening (`{"age":`) into the prompt, so that a weak model still
    starts the object; a backend that formats its own prompts (a chat server) sets `primes_answer` False."""

    name = "base"
    primes_answer = True

    def __init__(self, base_dir: str | Path, adapters: dict[str, str | Path], schema, settings: BackendSettings):
        from ...schema import answer_prefix, target_json_schema
        from ..loading import load_tokenizer

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
        """Each generated token as the text it adds to `text` (the decoded answer): confidence.token_pieces."""
        from ...confidence import token_pieces

        return token_pieces(ids, text, lambda each: self.tokenizer.batch_decode([[i] for i in each],
                                                                                 skip_special_tokens=True),
                            lambda prefix: self.tokenizer.decode(prefix, skip_special_tokens=True))

    def generate(self, prompts: list[list[dict]], decoding: Decoding | list[Decoding],
                 adapter: str | None | list[str | None] = None) -> list[list[Generation]]:
        """Answers for chat prompts, `decoding.n` per prompt, in order. `decoding` and `adapter` are one value
        for all prompts or one per prompt (adapter None = the base model); vLLM serves a mixed list in one batch."""
        result: list[list[Generation] | None] = [None] * len(prompts)
        for i, gens in self.stream(prompts, decoding, adapter):
            result[i] = gens
        return result  # type: ignore[return-value]

    def stream(self, prompts: list[list[dict]], decoding: Decoding | list[Decoding],
               adapter: str | None | list[str | None] = None) -> Iterator[tuple[int, list[Generation]]]:
        """The answers of `generate` as they are ready: (prompt index, completions), in any order, so that a
        caller can keep each one at once."""
        requests = self._requests(prompts, decoding, adapter)
        # closing: a caller that stops early (error, interrupt) ends the backend's work in flight at once
        with closing(self._answer(requests)) as answered:
            for i, gens in answered:
                if self.primes_answer and not requests[i].decoding.uses_constraint:   # the prompt held the opening
                    gens = [replace(g, text=self.answer_prefix + g.text) for g in gens]
                yield i, gens

    def _requests(self, prompts: list[list[dict]], decoding: Decoding | list[Decoding],
                  adapter: str | None | list[str | None]) -> list[Request]:
        n = len(prompts)
        names = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter] * n
        decodings = list(decoding) if isinstance(decoding, (list, tuple)) else [decoding] * n
        if len(names) != n:
            raise ValueError(f"{len(names)} adapter names for {n} prompts")
        if len(decodings) != n:
            raise ValueError(f"{len(decodings)} decodings for {n} prompts")
        for name in names:
            if name is not None and name not in self.adapters:
                raise KeyError(f"adapter {name!r} was not loaded (have: {', '.join(self.adapters) or 'none'})")
        return [Request(i, messages, dec, name) for i, (messages, dec, name) in enumerate(zip(prompts, decodings,
                                                                                               names))]

    def _answer(self, requests: list[Request]) -> Iterator[tuple[int, list[Generation]]]:
        """The backend's primitive: (request index, completions) for every request, in any order; with
        `primes_answer`, each text as generated after the primed opening."""
        raise NotImplementedError(f"the {self.name} backend does not generate")

    def close(self) -> None:
        pass
