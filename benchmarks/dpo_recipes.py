"""DPO recipes side by side: which pairs and which loss make the SFT adapter better, measured by extraction.

Every recipe starts from the same selected SFT adapter and the same make_pairs output, and differs only in what
its YAML entry sets:

  directions            the pair directions kept (pairs.DIRECTIONS; default all): value_to_null pairs reject
                        an omission and so push `null` down, null_to_value pairs reject a fabricated value
  max_direction_ratio   the cap of value_to_null vs null_to_value (pairs.balance_pairs); ignored when a
                        direction is left out
  dpo                   keys of params.yaml's `dpo` block (beta, lr, loss_type, loss_weights, ...)

Each recipe is trained with the dpo stage's own trainer (modeling.dpo.train_dpo) on at most `dpo.max_pairs` of
its pairs, saving every `dpo.save_steps`; then the SFT adapter (step 0) and every checkpoint of every recipe
answer the same `dpo.val_notes` validation notes (modeling.extractor.score_adapters) and are scored as the dpo
stage scores them: in one generation pass after the last recipe (`--score end`), or after each recipe with that
recipe's checkpoints (`--score each`: an engine start per recipe, and every finished recipe has its accuracy
on disk, for runs that may be cut short). Run make_pairs with `make_pairs.max_direction_ratio=null` so that each
recipe balances directions itself.

  python benchmarks/dpo_recipes.py --prepared data/prepared --pairs data/pairs --base models/base \\
      --sft models/sft --recipes benchmarks/dpo_recipes.yaml --work data/dpo_recipes --out metrics/dpo_recipes.json

The result (--out) holds, per recipe: its pairs by direction and type, the training summary (loss, gold
answers' log-prob change, where DPO moved probability by token class), the validation curve and which step the
dpo stage's guard would ship (the SFT adapter unless a checkpoint beats it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from survlm.artifacts import (ArtifactError, check_adapter_runs, continued_run, labelled_records,  # noqa: E402
                              load_prompt, read_jsonl, write_adapter_run, write_json)
from survlm.config import ConfigError, load_config, parse_section, to_dict  # noqa: E402
from survlm.pairs import DIRECTIONS, balance_pairs, summarize  # noqa: E402
from survlm.selection import checkpoints, dpo_selection  # noqa: E402

CURVE_KEYS = ("field_accuracy", "fabrication_rate", "omission_rate", "last_value_rate", "json_valid_rate")
RECIPE_KEYS = {"name", "directions", "max_direction_ratio", "dpo"}


def load_recipes(path: Path, base: dict) -> list[dict]:
    """The recipes of a YAML list, each with its DPO params parsed over `base` (params.yaml's dpo block)."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a list of recipes")
    recipes, names = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: recipe {i + 1}"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"{where}: expected a mapping with a name")
        unknown = set(entry) - RECIPE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]} (known: {', '.join(sorted(RECIPE_KEYS))})")
        if entry["name"] in names:
            raise ConfigError(f"{where}: name {entry['name']} is used twice")
        names.add(entry["name"])
        directions = tuple(entry.get("directions") or DIRECTIONS)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad:
            raise ConfigError(f"{where}.directions: {bad[0]} is no pair direction (known: {', '.join(DIRECTIONS)})")
        params = parse_section("dpo", {**base, **(entry.get("dpo") or {})}, f"{path} ({entry['name']})")
        if (problem := params.value_weight_problem()) is not None:
            raise ConfigError(f"{where}.dpo.value_weight: {problem}")
        recipes.append({"name": entry["name"], "directions": directions,
                        "max_direction_ratio": entry.get("max_direction_ratio"), "params": params,
                        "overrides": entry.get("dpo") or {}})
    return recipes


def recipe_pairs(pairs: list[dict], recipe: dict, seed: int) -> list[dict]:
    """The pairs a recipe trains on: its directions, balanced as it says, in the file's (shuffled) order."""
    kept = [p for p in pairs if p["direction"] in recipe["directions"]]
    both = {"value_to_null", "null_to_value"} <= set(recipe["directions"])
    kept, _ = balance_pairs(kept, None, recipe["max_direction_ratio"] if both else None, seed)
    limit = recipe["params"].max_pairs
    return kept[:limit] if limit else kept


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="prepare's output dir (validation notes, prompt)")
    ap.add_argument("--pairs", required=True, help="make_pairs' output dir (train.jsonl, eval.jsonl)")
    ap.add_argument("--base", required=True, help="the base model dir")
    ap.add_argument("--sft", required=True, help="the selected SFT adapter every recipe starts from")
    ap.add_argument("--recipes", required=True, help="YAML list of recipes")
    ap.add_argument("--work", required=True, help="where each recipe's checkpoints go (WORK/<name>)")
    ap.add_argument("--out", required=True, help="the result JSON")
    ap.add_argument("--only", nargs="*", help="run only these recipes (by name), in this order")
    ap.add_argument("--score", choices=("end", "each"), default="end",
                    help="validation: one pass after the last recipe, or one after each recipe")
    args = ap.parse_args(argv)
    try:
        base_params = load_config("dpo")
        recipes = load_recipes(Path(args.recipes), to_dict(base_params))
    except ConfigError as exc:
        sys.exit(str(exc))
    if args.only:
        missing = set(args.only) - {r["name"] for r in recipes}
        if missing:
            sys.exit(f"{args.recipes}: no recipe named {sorted(missing)[0]}")
        by_name = {r["name"]: r for r in recipes}
        recipes = [by_name[name] for name in dict.fromkeys(args.only)]
    sft, prepared, work = Path(args.sft), Path(args.prepared), Path(args.work)
    from survlm.modeling.dpo import train_dpo
    from survlm.modeling.extractor import score_adapters
    from survlm.modeling.loading import model_digest

    try:
        schema, system = load_prompt(prepared)
        sft_run = check_adapter_runs({"sft": sft}, args.base, model_digest(Path(args.base)), prepared, schema,
                                     system)["sft"]
    except ArtifactError as exc:
        sys.exit(str(exc))
    quantization = sft_run["quantization"]

    train_all = list(read_jsonl(Path(args.pairs) / "train.jsonl"))
    eval_pairs = list(read_jsonl(Path(args.pairs) / "eval.jsonl"))
    rows = labelled_records(prepared / "val.jsonl", base_params.val_notes)
    result: dict = {"base_dpo": to_dict(base_params), "pairs_in_file": summarize(train_all)["by_direction"],
                    "recipes": {}, "validation": {"notes": len(rows), "seconds": 0.0}}
    scores: dict[str, dict] = {}
    unscored: dict[str, Path] = {"sft": sft}

    def score_unscored() -> None:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            scores.update(score_adapters(Path(args.base), unscored, rows, schema, system, prepared,
                                         base_params.report, Path(scratch)))
        unscored.clear()
        result["validation"]["seconds"] = round(result["validation"]["seconds"] + time.perf_counter() - t0, 1)
        add_curves(result, scores)

    for recipe in recipes:
        name = recipe["name"]
        pairs = recipe_pairs(train_all, recipe, base_params.seed)
        out_dir = work / name
        t0 = time.perf_counter()
        summary = train_dpo(recipe["params"], pairs, eval_pairs, Path(args.base), sft, quantization, out_dir, None,
                            [f.name for f in schema])
        by_class = summary.pop("logp_change_by_pair_type")
        steps = dict(checkpoints(out_dir))
        steps.setdefault(summary["steps"], out_dir)
        for step, path in steps.items():
            write_adapter_run(path, continued_run(sft_run, "dpo", step))
            unscored[f"{name}@{step}"] = path
        result["recipes"][name] = {
            "directions": list(recipe["directions"]), "max_direction_ratio": recipe["max_direction_ratio"],
            "dpo": recipe["overrides"], "pairs": summarize(pairs), "train": summary,
            "logp_change_by_pair_type": by_class, "seconds": round(time.perf_counter() - t0, 1),
            "steps": sorted(steps)}
        print(f"dpo_recipes: {name}: {summary['steps']} steps on {len(pairs)} pairs in {summary['train_seconds']} s;"
              f" gold answers' log-prob changed by {summary['gold_logp_change']} nats", flush=True)
        if args.score == "each":
            score_unscored()
        write_json(args.out, result)   # a run cut short keeps what it trained (and scored)
    if unscored:
        score_unscored()
        write_json(args.out, result)


def add_curves(result: dict, scores: dict[str, dict]) -> None:
    """Each recipe whose checkpoints are all scored gets its validation curve (the SFT adapter as step 0), the
    step the dpo stage's guard would ship, and that step's errors."""
    result["validation"]["sft"] = {k: scores["sft"][k] for k in CURVE_KEYS}
    result["validation"]["sft_errors"] = scores["sft"]["errors"]
    for name, block in result["recipes"].items():
        if "curve" in block or any(f"{name}@{s}" not in scores for s in block["steps"]):
            continue
        curve = [{"step": 0, **result["validation"]["sft"]}]
        curve += [{"step": s, **{k: scores[f"{name}@{s}"][k] for k in CURVE_KEYS}} for s in block["steps"]]
        block["curve"] = curve
        block["selection"] = dpo_selection(curve)
        block["errors_at_best"] = scores[f"{name}@{block['selection']['best_dpo_step']}"]["errors"]
        print(f"dpo_recipes: {name}: " + ", ".join(f"step {c['step']} {c['field_accuracy']} "
                                                   f"(fabrication {c['fabrication_rate']})" for c in curve),
              flush=True)


if __name__ == "__main__":
    main()
