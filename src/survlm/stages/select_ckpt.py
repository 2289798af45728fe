"""DVC stage `select_ckpt`: score every SFT checkpoint (and the zero-shot base as step 0) by extraction
accuracy on validation notes; copy the best adapter to models/sft_best."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..extraction import parse_answer
from ..metrics import score
from ..schema import load_schema
from .common import atomic_dir, load_params, read_jsonl, write_json


def checkpoints(sft_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in sft_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found)


def choose_best(curve: list[dict]) -> dict:
    """Highest field accuracy; ties go to the earlier step (less training, same answer quality)."""
    return max(curve, key=lambda c: (c["field_accuracy"], -c["step"]))


def evaluate_adapter(base_dir: Path, adapter: Path | None, quantization: str, rows: list[dict], meta: dict,
                     schema, max_new_tokens: int, batch_size: int) -> tuple[dict, list[dict]]:
    from ..modeling.generate import answer_prefix, generate_answers
    from ..modeling.loading import load_adapter_for_inference, load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    model = load_adapter_for_inference(base_dir, adapter, quantization)
    answers = generate_answers(model, tokenizer, [r["messages"][:2] for r in rows], max_new_tokens, batch_size,
                               prefix=answer_prefix(schema))
    del model
    scored = [(r["labels"], parse_answer(a["text"], schema, r["messages"][1]["content"]), meta.get(r["id"]))
              for r, a in zip(rows, answers)]
    return score(schema, scored), answers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--sft", default="models/sft")
    ap.add_argument("--out", default="models/sft_best")
    ap.add_argument("--metrics", default="metrics/select_ckpt.json")
    ap.add_argument("--curve", default="metrics/select_ckpt_curve.json")
    args = ap.parse_args(argv)
    import torch

    params = load_params("select_ckpt")
    torch.manual_seed(int(params.get("seed", 0)))
    prepared, sft_dir = Path(args.prepared), Path(args.sft)
    schema = load_schema(json.loads((prepared / "prompt.json").read_text())["schema_path"])
    rows = list(read_jsonl(prepared / "val.jsonl"))[: int(params["val_notes"])]
    ids = {r["id"] for r in rows}
    meta = {m["id"]: m for m in read_jsonl(prepared / "render_meta.jsonl") if m["id"] in ids}
    run = json.loads((sft_dir / "run.json").read_text())
    candidates = [(0, None)] + checkpoints(sft_dir)
    curve = []
    for step, path in candidates:
        if step == 0 and not params.get("include_zero_shot", True):
            continue
        # Step 0 runs on the same (possibly 4-bit) base the adapters were trained on.
        m, _ = evaluate_adapter(Path(args.base), path, run["quantization"], rows, meta, schema,
                                int(params["max_new_tokens"]), int(params["batch_size"]))
        curve.append({"step": step, "checkpoint": path.name if path else "zero-shot", **{
            k: m[k] for k in ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")}})
        print(f"select_ckpt: step {step}: field accuracy {m['field_accuracy']}, json valid {m['json_valid_rate']}")
    best = choose_best([c for c in curve if c["step"] > 0] or curve)
    with atomic_dir(args.out) as tmp:
        if best["step"] > 0:
            for f in (sft_dir / best["checkpoint"]).iterdir():
                if f.name.startswith("adapter_") or f.name in ("README.md",):
                    shutil.copy2(f, tmp / f.name)
        (tmp / "selected.json").write_text(json.dumps({**best, "quantization": run["quantization"]}, indent=2) + "\n")
    zero = next((c for c in curve if c["step"] == 0), None)
    write_json(args.metrics, {"val_notes": len(rows), "best": best, "zero_shot": zero,
                              "gain_over_zero_shot": None if zero is None else
                              round(best["field_accuracy"] - zero["field_accuracy"], 4)})
    write_json(args.curve, curve)


if __name__ == "__main__":
    main()
