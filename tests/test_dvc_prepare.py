"""Real `dvc repro` of base_model + prepare in a temp copy of the project, with a small params override."""
import json
import shutil
import subprocess

import pytest
import yaml
from conftest import dvc_env, make_repo_copy


def _dvc(repo, *args, check=True):
    return subprocess.run(["dvc", *args], cwd=repo, env=dvc_env(), capture_output=True, text=True, check=check)


def _set_params(repo, **sections):
    p = repo / "params.yaml"
    params = yaml.safe_load(p.read_text())
    for section, values in sections.items():
        params[section].update(values)
    p.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def with_base(tmp_path_factory, tiny_llama_dir):
    """The project in a DVC repo with base_model reproduced from the tiny Llama, once for this module."""
    repo = make_repo_copy(tmp_path_factory.mktemp("with-base") / "repo")
    _set_params(repo, model={"base": str(tiny_llama_dir)})
    _dvc(repo, "repro", "base_model")
    return repo


@pytest.fixture
def repo_copy(with_base, tmp_path):
    """A copy of `with_base` per test: `dvc repro prepare` finds base_model up to date."""
    return shutil.copytree(with_base, tmp_path / "repo", symlinks=True)


def test_dvc_repro_prepare(repo_copy, tiny_llama_dir):
    _set_params(repo_copy, model={"base": str(tiny_llama_dir)},
                prepare={"max_patients": 60, "note_tokens": 600, "workers": 1})
    run = _dvc(repo_copy, "repro", "prepare", check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'base_model' didn't change" in run.stdout     # reproduced once for the module, not again
    out = repo_copy / "data" / "prepared"
    metrics = json.loads((repo_copy / "metrics" / "prepare.json").read_text())
    assert metrics["patients"] == 60 and sum(metrics["splits"].values()) == 60
    assert metrics["first_mention_wrong_rate"] > 0.99 and metrics["last_mention_wrong_rate"] == 1.0
    ids = {}
    for split in ("train", "val", "pairs", "test", "test_heldout"):
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        for r in rows:
            # the plain layout: no chat turns, no system prompt (that is in prompt.json, once)
            assert list(r) == ["id", "split", "style", "text", "labels", "target", "time", "event", "n_tokens"]
            assert r["split"] == split and json.loads(r["target"]) and r["text"]
            assert set(r["labels"]) == set(metrics["null_rate"])
            ids.setdefault(r["id"], split)
        assert len(rows) == metrics["splits"][split]
        if split == "train":  # written in a seeded random order (heads are samples), not the source's
            assert [r["id"] for r in rows] != sorted(r["id"] for r in rows)
    assert len(ids) == 60  # patient-level split: each patient in exactly one split
    from survlm.artifacts import load_prompt

    schema, system = load_prompt(out)
    assert schema.digest == metrics["schema"]["digest"] and system.startswith("Extract one JSON object")
    held = [json.loads(line)["style"] for line in (out / "test_heldout.jsonl").read_text().splitlines()]
    train = [json.loads(line)["style"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert held and set(held) == {"nursing"} and "nursing" not in train
    # Note text lives only in the prepared records, never in metrics.
    assert "HD" not in (repo_copy / "metrics" / "prepare.json").read_text()

    # Nothing changed -> nothing to do up to prepare; a prepare param change reruns prepare (and what
    # consumes its outputs), never base_model.
    assert "up to date" in _dvc(repo_copy, "status", "prepare").stdout
    _set_params(repo_copy, prepare={"note_tokens": 500})
    assert set(json.loads(_dvc(repo_copy, "status", "--json", "prepare").stdout)) == {"prepare"}

    first = (out / "train.jsonl").read_bytes()
    _set_params(repo_copy, prepare={"note_tokens": 600})
    assert _dvc(repo_copy, "repro", "prepare", "--force", "--single-item").returncode == 0
    assert (out / "train.jsonl").read_bytes() == first  # same params, same bytes


def test_dvc_prepare_rejects_bad_user_file(repo_copy, tiny_llama_dir):
    bad = repo_copy / "data" / "user" / "notes.jsonl"
    bad.write_text('{"id": "1", "text": "HD3 Na 140", "time": 5, "event": 1}\n'
                   '{"id": "1", "text": "", "time": -1, "event": 3}\n')
    _set_params(repo_copy, model={"base": str(tiny_llama_dir)},
                prepare={"source": "path", "path": "data/user/notes.jsonl", "workers": 1})
    run = _dvc(repo_copy, "repro", "prepare", check=False)
    assert run.returncode != 0
    for problem in ("notes.jsonl:2: id: duplicate id '1'", "notes.jsonl:2: text: missing or empty",
                    "notes.jsonl:2: time: negative (-1)", "notes.jsonl:2: event: must be 0 or 1 (got 3)"):
        assert problem in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    assert not (repo_copy / "data" / "prepared").exists()
    assert not (repo_copy / "metrics" / "prepare.json").exists()


def test_dvc_prepare_user_file(repo_copy, tiny_llama_dir):
    rows = [{"id": f"p{i}", "text": f"Day 3 sodium {130 + i}", "time": 10 + i, "event": i % 2,
             "sodium_meq_l": 130 + i} for i in range(20)]
    (repo_copy / "data" / "user" / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _set_params(repo_copy, model={"base": str(tiny_llama_dir)},
                prepare={"source": "path", "path": "data/user/notes.jsonl", "workers": 1})
    run = _dvc(repo_copy, "repro", "prepare", check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((repo_copy / "metrics" / "prepare.json").read_text())
    assert metrics["patients"] == 20 and metrics["source"] == "path"
    # ph has no label anywhere: unknown, not null
    assert metrics["null_rate"]["sodium_meq_l"] == 0.0 and metrics["null_rate"]["ph"] is None
    assert metrics["labelled_rate"]["ph"] == 0.0 and metrics["evidence"]["totals"]["located"] == 20
