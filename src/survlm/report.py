"""What a run says, for people: a few headline numbers per stage (what `dvc exp show` and `dvc metrics diff`
compare) and one self-contained HTML page (tables with bootstrap intervals, plots as inline SVG, what ran).

Reads only the stages' metrics, plot data and training logs; never a note. Pure Python plus matplotlib (for the
SVGs); no torch. Every input is optional: a stage that has not run is left out, not an error.
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from .metrics import HEADLINE
from .predictions import ABSTAINING, MODELS, TEST_SPLIT, TEST_SPLITS, ZERO_SHOT

MODEL_NAMES = {"dpo": "DPO", ABSTAINING: "DPO, abstaining", "sft": "SFT", ZERO_SHOT: "zero-shot", "regex": "regex"}
RATES = (("field_accuracy", "field accuracy"), ("fabrication_rate", "fabrication"),
         ("last_value_rate", "last value"), ("json_valid_rate", "JSON valid"))

# stage -> (headline name, dotted path in the stage's metrics file). Timings stay out: they change every run.
HEADLINE_PATHS: dict[str, list[tuple[str, str]]] = {
    "prepare": [("patients", "patients"), ("note_tokens_mean", "note_tokens.mean"),
                ("notes_over_budget", "note_tokens.over_budget")],
    "sft": [("steps", "steps"), ("train_examples", "train_examples"), ("train_loss", "train_loss"),
            ("eval_loss", "final_eval_loss")],
    "select_ckpt": [("best_step", "best.step"), ("field_accuracy", "best.field_accuracy"),
                    ("json_valid_rate", "best.json_valid_rate"), ("zero_shot_field_accuracy", "zero_shot.field_accuracy"),
                    ("gain_over_zero_shot", "gain_over_zero_shot")],
    "make_pairs": [("pairs", "pairs"), ("train_pairs", "train_pairs"), ("eval_pairs", "eval_pairs"),
                   ("model_made_share", "model_made_share")],
    "dpo": [("steps", "train.steps"), ("train_loss", "train.train_loss"),
            ("reward_margin", "train.last_step.rewards/margins"),
            ("reward_accuracy", "train.last_step.rewards/accuracies"),
            ("eval_reward_margin", "train.eval.eval_rewards/margins"),
            ("eval_reward_accuracy", "train.eval.eval_rewards/accuracies"),
            ("gold_logp_change", "train.gold_logp_change"),
            ("ref_max_abs_diff_from_sft", "train.ref_adapter_max_abs_diff_from_sft"),
            ("val_field_accuracy_sft", "validation.sft.field_accuracy"),
            ("val_field_accuracy_dpo", "validation.dpo.field_accuracy"),
            ("selected", "selected"), ("selected_step", "selected_step"), ("margin_over_sft", "margin_over_sft")],
    "infer": [("backend", "backend"), ("abstention_threshold", "abstention.threshold")],
}


def dig(d: Any, path: str) -> Any:
    """d["a"]["b"] for "a.b"; keys may contain "/" (TRL's "rewards/margins"). None where absent."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def headline(stage: str, m: dict) -> dict:
    """The few numbers of one stage's metrics file worth a column in `dvc exp show`."""
    out = {name: dig(m, path) for name, path in HEADLINE_PATHS.get(stage, [])}
    if stage == "infer":
        tasks = (m.get("tasks") or {}).values()
        out.update(rows=sum(t.get("rows", 0) for t in tasks),
                   hit_max_new_tokens=sum(t.get("hit_max_new_tokens", 0) for t in tasks),
                   chunked_notes=sum(t.get("chunked_notes_total", 0) for t in tasks),
                   chunk_conflicts=sum(t.get("chunk_conflicts", 0) for t in tasks))
    if stage == "evaluate":
        for split, by_model in (m.get("extraction_by_model") or {}).items():
            for model, s in by_model.items():
                out.setdefault(split, {})[model] = {k: s.get(k) for k, _ in RATES}
        sv = m.get("survival") or {}
        out["survival"] = {k: sv.get(k) for k in ("notes", "cindex_gold", "cindex_dpo", "cindex_gap_dpo")}
        full = dig(sv, "full_test.by_source") or {}
        out["survival"].update({f"whole_test_cindex_{k}": v.get("cox_harrell") for k, v in full.items()})
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------- evaluate's Markdown and plot data

def _ci_text(ci) -> str:
    return "" if not ci else f" (95 % CI {ci[0]} to {ci[1]})"


def report_md(ev: dict) -> str:
    """evaluate's Markdown report (metrics/report.md): extraction by model and split, errors by field of the
    trained models, the survival comparison."""
    lines = ["# survlm evaluation", ""]
    for split, by_model in ev["extraction_by_model"].items():
        lines += [f"## Extraction: {split} ({by_model.get('dpo', by_model.get('regex'))['notes']} notes)", "",
                  "| model | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
        for model, m in by_model.items():
            lines.append(f"| {model} | " + " | ".join(str(m[k]) for k in HEADLINE) + " |")
        lines.append("")
    for model in ("dpo", "sft"):  # the trained models: where their errors are decides the next fix
        m = ev["extraction_by_model"].get(TEST_SPLIT, {}).get(model)
        wrong = {name: tags for name, tags in (m or {}).get("per_field_errors", {}).items() if tags}
        if not wrong:
            continue
        lines += [f"## Errors by field: {model} on test", "", "| field | accuracy | error tags |", "|---|---|---|"]
        for name, tags in wrong.items():
            ranked = sorted(tags.items(), key=lambda kv: -kv[1])
            lines.append(f"| {name} | {m['per_field'][name]} | " + ", ".join(f"{t} {n}" for t, n in ranked) + " |")
        lines.append("")
    s = ev["survival"]
    lines += ["## Survival (models fit on train gold covariates)", "",
              f"Extracted test notes: {s['notes']}. Headline: C-index(DPO) - C-index(gold) = {s['cindex_gap_dpo']}"
              f"{_ci_text((s.get('ci95') or {}).get('cindex_gap_dpo'))}.",
              "", "| covariates | Cox Harrell C | Cox Uno C | Cox IBS | RSF Harrell C | RSF IBS |", "|---|---|---|---|---|---|"]
    for name, m in s.get("by_source", {}).items():
        if isinstance(m, dict):
            lines.append(f"| {name} | {m['cox_harrell']} | {m['cox_uno']} | {m['cox_ibs']} | {m['rsf_harrell']} | "
                         f"{m['rsf_ibs']} |")
    full = s.get("full_test", {})
    if full.get("by_source"):
        lines += ["", f"Whole test split ({full['notes']} notes): Cox C-index gold {full['by_source']['gold']['cox_harrell']}, "
                      f"regex {full['by_source']['regex']['cox_harrell']}."]
    lines += ["", "Accuracy: numbers within max(1 % relative, rounding); categories exact; null must be null.", ""]
    return "\n".join(lines)


def plot_rows(ev: dict) -> dict[str, list[dict]]:
    """Plot data from the metrics: field accuracy and error tags per (split, model, covariate).

    The schema field is called `covariate` here: DVC's plots reserve the key `field`."""
    acc, errs = [], []
    for split, by_model in ev["extraction_by_model"].items():
        for model, m in by_model.items():
            acc += [{"split": split, "model": model, "covariate": f, "accuracy": a} for f, a in m["per_field"].items()]
            errs += [{"split": split, "model": model, "covariate": f, "error": tag, "count": n}
                     for f, tags in m.get("per_field_errors", {}).items() for tag, n in tags.items()]
    return {"per_field_accuracy": acc, "field_errors": errs}


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px}th,td{padding:3px 9px;border-bottom:1px solid #eee;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:12px}
.note{color:#555;font-size:13px}.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}
figcaption{font-size:12px;color:#555;max-width:560px}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
.bad{color:#b00}.left td,.left th{text-align:left}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _e(v)


def _with_ci(v: Any, ci: Any) -> str:
    cell = _num(v)
    if ci:
        cell += f' <span class="ci">[{_num(ci[0])}, {_num(ci[1])}]</span>'
    return cell


def _table(head: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def headline_table(ev: dict) -> str:
    by_split = ev.get("extraction_by_model") or {}
    surv = ev.get("survival") or {}
    ci_s = surv.get("ci95") or {}
    rows = []
    for split in TEST_SPLITS:
        for model in MODELS:
            m = (by_split.get(split) or {}).get(model)
            if not m:
                continue
            ci = m.get("ci95") or {}
            c = ""
            if split == TEST_SPLIT:
                c = _with_ci(surv.get(f"cindex_{model}"), ci_s.get(f"cindex_{model}"))
            rows.append([f"{MODEL_NAMES.get(model, _e(model))}", _e(split), _num(m.get("notes"))]
                        + [_with_ci(m.get(k), ci.get(k)) for k, _ in RATES] + [c])
    if not rows:
        return '<p class="note">No extraction results.</p>'
    gold = _with_ci(surv.get("cindex_gold"), ci_s.get("cindex_gold"))
    gap = _with_ci(surv.get("cindex_gap_dpo"), ci_s.get("cindex_gap_dpo"))
    return (_table(["model", "split", "notes"] + [n for _, n in RATES] + ["Cox C-index"], rows)
            + f'<p>Cox C-index on the same test notes with gold covariates: {gold}. '
              f'<b>C-index(DPO) − C-index(gold): {gap}</b> (paired: both on each resampled set of patients).</p>'
            + '<p class="note">[low, high]: 95 % percentile bootstrap over notes. Accuracy: numbers within '
              'max(1 % relative, rounding); categories exact; null must be null.</p>')


def per_field_table(ev: dict) -> str:
    test = (ev.get("extraction_by_model") or {}).get(TEST_SPLIT) or {}
    models = [m for m in MODELS if m in test]
    if not models:
        return ""
    fields = list(test[models[0]]["per_field"])
    rows = []
    for f in fields:
        errs = (test.get("dpo") or test[models[0]]).get("per_field_errors", {}).get(f, {})
        top = ", ".join(f"{t} {n}" for t, n in sorted(errs.items(), key=lambda kv: -kv[1])[:3])
        rows.append([_e(f)] + [_num(test[m]["per_field"].get(f), 2) for m in models] + [_e(top)])
    who = "DPO" if "dpo" in test else MODEL_NAMES[models[0]]
    return _table(["field"] + [MODEL_NAMES[m] for m in models] + [f"{who}: most frequent errors"], rows)


def survival_table(ev: dict) -> str:
    surv = ev.get("survival") or {}
    out = []
    for title, block in ((f"Extracted test notes ({surv.get('notes')})", surv),
                         (f"Whole test split ({dig(surv, 'full_test.notes')})", surv.get("full_test") or {})):
        src = block.get("by_source") or {}
        if not src:
            continue
        ci = block.get("ci95") or {}
        rows = [[_e(name), _with_ci(m.get("cox_harrell"), ci.get(f"cindex_{name}")), _num(m.get("cox_uno")),
                 _num(m.get("cox_ibs")), _num(m.get("rsf_harrell")), _num(m.get("rsf_ibs"))]
                for name, m in src.items() if isinstance(m, dict)]
        out.append(f"<h3>{_e(title)}</h3>" + _table(["covariates", "Cox Harrell C", "Cox Uno C", "Cox IBS",
                                                     "RSF Harrell C", "RSF IBS"], rows))
    refit = surv.get("refit_on_extracted")
    if refit:
        out.append("<p>Cox refit on extracted covariates (2-fold cross-fit): "
                   + ", ".join(f"{_e(k)} {_num(v)}" for k, v in refit.items()) + "</p>")
    return "".join(out) or '<p class="note">No survival results.</p>'


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)   # matplotlib's RDF block: nothing to show
    return text[text.index("<svg"):]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "survlm", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _have_matplotlib() -> bool:
    """Plots need matplotlib (a lifelines dependency); an image without it still gets every table."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_field_accuracy(rows: list[dict]) -> str | None:
    rows = [r for r in rows if r.get("split") == TEST_SPLIT]
    if not rows or not _have_matplotlib():
        return None
    plt = _plt()
    fields = list(dict.fromkeys(r["covariate"] for r in rows))
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    acc = {(r["model"], r["covariate"]): r["accuracy"] for r in rows}
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(fields) + 1))
    h = 0.8 / len(models)
    for k, m in enumerate(models):
        ax.barh([i + k * h for i in range(len(fields))], [acc.get((m, f)) or 0 for f in fields], height=h,
                label=MODEL_NAMES[m])
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(fields))], fields)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("field accuracy (test)")
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig)


def plot_km(rows: list[dict]) -> str | None:
    if not rows or not _have_matplotlib():
        return None
    plt = _plt()
    cohorts = list(dict.fromkeys(r["cohort"] for r in rows))
    colours = {"low": "#2ca02c", "middle": "#ff7f0e", "high": "#d62728"}
    fig, axes = plt.subplots(1, len(cohorts), figsize=(5.2 * len(cohorts), 3.6), squeeze=False)
    for ax, cohort in zip(axes[0], cohorts):
        sub = [r for r in rows if r["cohort"] == cohort]
        for source in dict.fromkeys(r["source"] for r in sub):
            for group in ("low", "middle", "high"):
                curve = [r for r in sub if r["source"] == source and r["risk_group"] == group]
                if not curve:
                    continue
                t = [r["time"] for r in curve]
                ax.step(t, [r["survival"] for r in curve], where="post", color=colours[group],
                        linestyle="-" if source == "gold" else "--", label=f"{source}, {group} risk")
                ax.fill_between(t, [r["lower"] for r in curve], [r["upper"] for r in curve], step="post",
                                color=colours[group], alpha=0.06 if source == "gold" else 0.03)
        ax.set_ylim(0, 1.02)
        ax.set_title(cohort, fontsize=9)
        ax.set_xlabel("days")
        ax.set_ylabel("survival")
        ax.legend(fontsize=7, ncol=2)
    return _svg(fig)


def at_risk_table(rows: list[dict]) -> str:
    out = []
    for cohort in dict.fromkeys(r["cohort"] for r in rows):
        ticks = [r for r in rows if r["cohort"] == cohort and r.get("tick")]
        times = sorted({r["time"] for r in ticks})
        keys = list(dict.fromkeys((r["source"], r["risk_group"]) for r in ticks))
        cell = {(r["source"], r["risk_group"], r["time"]): r["at_risk"] for r in ticks}
        out.append(f"<p class='note'>At risk, {_e(cohort)}:</p>" + _table(
            ["covariates, risk group"] + [f"day {t:g}" for t in times],
            [[f"{_e(s)}, {_e(g)}"] + [_num(cell.get((s, g, t))) for t in times] for s, g in keys]))
    return "".join(out)


def plot_lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, hline: float | None = None,
               ylim: tuple | None = None) -> str | None:
    series = {k: v for k, v in series.items() if v}
    if not series or not _have_matplotlib():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="#999", linewidth=0.8, linestyle=":")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _svg(fig)


def read_tsv(path: Path, column: str) -> list[tuple[float, float]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [(float(r["step"]), float(r[column])) for r in csv.DictReader(fh, delimiter="\t")]


def _figure(svg: str | None, caption: str) -> str:
    return "" if svg is None else f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def what_ran(metrics: dict[str, dict], lock: dict, params: dict, versions: dict[str, str]) -> str:
    rows = []
    for stage, info in (lock.get("stages") or {}).items():
        outs = ", ".join(f"{_e(o['path'])} <span class='ci'>{_e(str(o.get('md5', ''))[:8])}</span>"
                         for o in info.get("outs", []))
        rows.append([_e(stage), f"<code>{_e(info.get('cmd', ''))}</code>", outs])
    timing = {"sft training (s)": dig(metrics, "sft.train_seconds"),
              "dpo training (s)": dig(metrics, "dpo.train.train_seconds"),
              "infer engine start (s)": dig(metrics, "infer.engine_start_s"),
              "infer generation (s)": dig(metrics, "infer.generation_s"),
              "infer backend": dig(metrics, "infer.backend"),
              "sft device": dig(metrics, "sft.device"),
              "sft peak memory (GiB)": dig(metrics, "sft.peak_mem_gib")}
    out = "<h3>Stages (dvc.lock)</h3>" + (_table(["stage", "command", "outputs (md5)"], rows).replace(
        "<table>", "<table class='left'>", 1) if rows else
                                          '<p class="note">No dvc.lock.</p>')
    out += "<h3>Times and machine</h3>" + _table(["", ""], [[_e(k), _num(v, 1)] for k, v in timing.items()
                                                            if v is not None])
    out += "<h3>Software</h3>" + _table(["package", "version"], [[_e(k), _e(v)] for k, v in versions.items()])
    import yaml

    out += "<details><summary>params.yaml</summary><pre>" + _e(yaml.safe_dump(params, sort_keys=False)) + \
           "</pre></details>"
    return out


def render_html(metrics: dict[str, dict], plots: dict[str, list], dvclive: Path, lock: dict, params: dict,
                versions: dict[str, str], title: str = "survlm run report") -> str:
    ev = metrics.get("evaluate") or {}
    sel = metrics.get("select_ckpt") or {}
    curve = plots.get("select_ckpt_curve") or []
    ckpt = plot_lines({name: [(c["step"], c[key]) for c in curve if c.get(key) is not None]
                       for key, name in RATES}, "SFT step (0 = zero-shot base)", "validation rate", ylim=(0, 1.02))
    dpo_dir = dvclive / "dpo" / "plots" / "metrics"
    margins = plot_lines({"train batch": read_tsv(dpo_dir / "rewards" / "margins.tsv", "margins"),
                          "eval pairs": read_tsv(dpo_dir / "eval" / "rewards" / "margins.tsv", "margins")},
                         "DPO step", "reward margin (chosen − rejected)", hline=0.0)
    accs = plot_lines({"train batch": read_tsv(dpo_dir / "rewards" / "accuracies.tsv", "accuracies"),
                       "eval pairs": read_tsv(dpo_dir / "eval" / "rewards" / "accuracies.tsv", "accuracies")},
                      "DPO step", "reward accuracy", ylim=(-0.02, 1.02))
    sft_dir = dvclive / "sft" / "plots" / "metrics"
    loss = plot_lines({"train": read_tsv(sft_dir / "loss.tsv", "loss"),
                       "eval": read_tsv(sft_dir / "eval" / "loss.tsv", "loss")}, "SFT step", "loss")
    km = plots.get("km_risk_groups") or []
    extr = ev.get("extraction") or {}
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class='note'>Base model {_e(dig(params, 'model.base'))}; extraction by the "
             f"{_e(MODEL_NAMES.get(extr.get('model'), extr.get('model')))} adapter on "
             f"{_num(extr.get('notes'))} test notes. Small samples give wide intervals: read them before the "
             f"point estimates.</p>",
             "<h2>Headline: extraction and C-index by model and split</h2>", headline_table(ev),
             "<h2>Per field (test)</h2>", per_field_table(ev),
             _figure(plot_field_accuracy(plots.get("per_field_accuracy") or []), "Field accuracy on test notes."),
             "<h2>Survival: gold vs extracted covariates</h2>", survival_table(ev),
             _figure(plot_km(km), "Kaplan-Meier by tertile of predicted Cox risk; solid: gold covariates, dashed: "
                                  "extracted, on the same patients; bands: 95 % (Greenwood)."),
             at_risk_table(km),
             "<h2>Training</h2><div class='plots'>",
             _figure(ckpt, f"Validation rates by SFT checkpoint ({_num(sel.get('val_notes'))} notes); selected "
                           f"step {_num(dig(sel, 'best.step'))}."),
             _figure(loss, "SFT loss."), _figure(margins, "DPO reward margin per step."),
             _figure(accs, "DPO reward accuracy per step (share of pairs ranked right)."), "</div>",
             "<h2>What ran</h2>", what_ran(metrics, lock, params, versions)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>" + _e(title) + "</title><style>"
            + CSS + "</style></head><body>" + "".join(parts) + "</body></html>\n")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
