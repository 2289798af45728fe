"""The report stage on metrics made here: small headline files per stage, and an HTML page that stands alone
(checked in headless Chromium where it is installed)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from survlm.report import headline

FIELDS = ("age", "sodium_meq_l", "ph")


def _score(acc, ci=None):
    m = {"notes": 6, "field_accuracy": acc, "fabrication_rate": 0.5, "last_value_rate": 0.25, "json_valid_rate": 1.0,
         "per_field": {f: acc for f in FIELDS}, "per_field_errors": {"ph": {"last_value": 2, "wrong_day": 1}},
         "statuses": {"ok": 10}, "errors": {"last_value": 2}}
    if ci:
        m["ci95"] = {"field_accuracy": ci, "fabrication_rate": [0.1, 0.9], "last_value_rate": None,
                     "json_valid_rate": [1.0, 1.0]}
    return m


@pytest.fixture
def run(tmp_path, monkeypatch):
    m = tmp_path / "metrics"
    (m / "plots").mkdir(parents=True)
    ev = {"extraction_by_model": {"test": {"dpo": _score(0.5, [0.25, 0.75]), "regex": _score(0.75)},
                                  "test_heldout": {"dpo": _score(0.4)}},
          "extraction": {"model": "dpo", "notes": 6},
          "survival": {"notes": 6, "cindex_gold": 0.7, "cindex_dpo": 0.6, "cindex_gap_dpo": -0.1,
                       "ci95": {"cindex_gap_dpo": [-0.3, 0.05], "cindex_gold": [0.5, 0.9]},
                       "by_source": {"gold": {"cox_harrell": 0.7, "cox_uno": 0.69, "cox_ibs": 0.2}},
                       "full_test": {"notes": 40, "by_source": {"gold": {"cox_harrell": 0.71},
                                                                "regex": {"cox_harrell": 0.65}}}}}
    files = {"evaluate": ev, "sft": {"steps": 32, "train_loss": 0.35, "train_seconds": 538.3},
             "select_ckpt": {"val_notes": 4, "best": {"step": 32, "field_accuracy": 0.34}, "zero_shot": None},
             "infer": {"backend": "hf", "generation_s": 1660.7,
                       "tasks": {"dpo/test": {"rows": 6, "hit_max_new_tokens": 1, "chunked_notes_total": 2,
                                              "chunk_conflicts": 3}}},
             "dpo": {"train": {"steps": 6, "last_step": {"rewards/margins": 1.33}, "train_seconds": 305.2}}}
    for name, data in files.items():
        (m / f"{name}.json").write_text(json.dumps(data))
    (m / "select_ckpt_curve.json").write_text(json.dumps([
        {"step": s, "field_accuracy": a, "json_valid_rate": 0.5, "fabrication_rate": 0.9, "last_value_rate": 0.2}
        for s, a in ((0, 0.1), (16, 0.26), (32, 0.34))]))
    (m / "plots" / "per_field_accuracy.json").write_text(json.dumps(
        [{"split": "test", "model": "dpo", "covariate": f, "accuracy": 0.5} for f in FIELDS]))
    km = [{"cohort": "extracted test notes: gold vs dpo (6 patients)", "source": s, "risk_group": g, "time": t,
           "survival": 1 - t / 1000, "lower": 0.5 - t / 2000, "upper": 1.0, "at_risk": 2, "tick": t == 0}
          for s in ("gold", "dpo") for g in ("low", "middle", "high") for t in (0.0, 100.0, 200.0)]
    (m / "plots" / "km_risk_groups.json").write_text(json.dumps(km))
    d = tmp_path / "dvclive" / "dpo" / "plots" / "metrics" / "rewards"
    d.mkdir(parents=True)
    (d / "margins.tsv").write_text("step\tmargins\n0\t0.0\n1\t0.5\n2\t1.3\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"base": "bundled:smollm2-135m-instruct"}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "sft": {"cmd": "python -m survlm.stages.sft", "outs": [{"path": "models/sft", "md5": "0123456789abcdef"}]}}}))
    monkeypatch.chdir(tmp_path)
    from survlm.stages import report

    report.main(report.Paths(metrics_dir=Path("metrics"), dvclive=Path("dvclive"),
                             headline_dir=Path("metrics/headline"), html=Path("metrics/report.html"),
                             lock=Path("dvc.lock"), params=Path("params.yaml")))
    return tmp_path


def test_headline_files_are_small_and_carry_no_timings(run):
    heads = {p.stem: json.loads(p.read_text()) for p in (run / "metrics" / "headline").glob("*.json")}
    assert set(heads) == {"evaluate", "sft", "select_ckpt", "infer", "dpo"}
    assert heads["evaluate"]["test"]["dpo"]["field_accuracy"] == 0.5
    assert heads["evaluate"]["survival"]["cindex_gap_dpo"] == -0.1
    assert heads["evaluate"]["survival"]["whole_test_cindex_regex"] == 0.65
    assert heads["infer"] == {"backend": "hf", "rows": 6, "hit_max_new_tokens": 1, "chunked_notes": 2,
                              "chunk_conflicts": 3}
    assert heads["dpo"] == {"steps": 6, "reward_margin": 1.33}
    text = json.dumps(heads)
    assert "seconds" not in text and "generation_s" not in text and "per_field" not in text
    assert headline("select_ckpt", {}) == {}                  # a stage with nothing recorded: nothing, no error


def test_report_html_stands_alone(run):
    page = (run / "metrics" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)   # nothing fetched from anywhere
    assert "<script" not in page
    assert page.count("<svg") == 4                           # field accuracy, KM, checkpoint curve, DPO margin
    assert "0.500 <span class=\"ci\">[0.250, 0.750]</span>" in page          # headline cell with its interval
    assert "-0.100 <span class=\"ci\">[-0.300, 0.050]</span>" in page        # the paired C-index gap
    assert "last_value 2, wrong_day 1" in page and "sft training (s)" in page
    assert "python -m survlm.stages.sft" in page and "01234567" in page


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    page = (run / "metrics" / "report.html").resolve()
    shot = tmp_path / "report.png"
    # no network at all: any fetch the page tried would fail and leave a hole
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "C-index(DPO) − C-index(gold)" in dom.stdout and dom.stdout.count("<svg") == 4
    subprocess.run([exe, *flags, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 3000)
    dark = sum(1 for p in img.getdata() if p < 128)
    assert dark > 20_000                                     # text, tables and plots were drawn
    top, bottom = img.crop((0, 0, 1200, 1500)), img.crop((0, 1500, 1200, 3000))
    assert top.getextrema()[0] < 100 and bottom.getextrema()[0] < 100   # content down the page, not one header
