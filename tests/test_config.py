"""survlm.config: the typed params of every stage. params.yaml states every key and parses without an unknown one,
the dataclass defaults are params.yaml's values (so the two cannot drift), and a key that fits no config stops the
stage with one line naming the section and key. The presets state only what they change; `apply` resolves them
over the defaults into params.yaml."""
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from survlm.config import (ENGINE_DEFAULTS, SECTIONS, BackendSettings, ConfigError, defaults_document, load_config,
                           parse_section, resolve_params, to_dict)

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "params").glob("*.yaml"))


def _stated_keys(cls, data: dict, where: str) -> list[str]:
    """Where params.yaml and the config's fields differ: keys one has and the other lacks, nested blocks too."""
    names = {f.name for f in dataclasses.fields(cls)}
    problems = [f"{where}.{k}: not a field" for k in data if k not in names]
    problems += [f"{where}.{n}: not in params.yaml" for n in names if n not in data]
    hints = typing.get_type_hints(cls)
    for name in names & set(data):
        if hints[name] is BackendSettings:
            problems += [f"{where}.{name}: {sorted(data[name])} != {sorted(ENGINE_DEFAULTS)}"
                         for _ in [0] if set(data[name]) != set(ENGINE_DEFAULTS)]
        elif dataclasses.is_dataclass(hints[name]):
            problems += _stated_keys(hints[name], data[name], f"{where}.{name}")
    return problems


def test_params_yaml_states_every_field_and_only_fields():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(params) == set(SECTIONS)
    problems = [p for section, cls in SECTIONS.items() for p in _stated_keys(cls, params[section], section)]
    assert not problems, problems


def test_defaults_equal_params_yaml():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, cls in SECTIONS.items():
        parsed = parse_section(section, params[section])
        assert parsed == cls(), section                        # every default is params.yaml's value
        assert to_dict(parsed) == to_dict(cls()), section
    assert parse_section("infer", params["infer"]).engine == BackendSettings.from_params(ENGINE_DEFAULTS)


def _agrees(got, stated) -> bool:
    """Every value `stated` (nested mappings key by key) is the one parsed."""
    if isinstance(stated, dict):
        return all(_agrees(got[k], v) for k, v in stated.items())
    return got == stated


def test_defaults_document_is_params_yaml():
    assert defaults_document() == yaml.safe_load((REPO / "params.yaml").read_text())


# What each preset resolved to when it was a full copy of params.yaml. A change to params.yaml or a preset that
# moves a preset's params fails here; record the new resolution in the same change, on purpose.
RECORDED = json.loads((REPO / "tests" / "data" / "resolved_presets.json").read_text())


def test_every_preset_is_recorded():
    assert sorted(RECORDED) == [p.name for p in PRESETS] and len(PRESETS) >= 4


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_thin_preset_resolves_to_the_recorded_params(preset):
    params = resolve_params(preset)
    assert params == RECORDED[preset.name]
    assert params != defaults_document()
    for section in SECTIONS:                                      # every section parses as the stages read it
        assert _agrees(to_dict(parse_section(section, params[section], preset.name)), params[section]), section
    # GPU presets: QLoRA and long notes
    assert params["sft"]["quantization"] == "nf4" and params["prepare"]["note_tokens"] >= 2048


def _same_as_default(stated, default, where: str) -> list[str]:
    if isinstance(stated, dict) and isinstance(default, dict):
        return [p for k, v in stated.items() for p in _same_as_default(v, default[k], f"{where}.{k}")]
    return [where] if stated == default else []


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_states_only_what_it_changes(preset):
    stated = yaml.safe_load(preset.read_text())
    assert set(stated) <= set(SECTIONS)
    defaults = defaults_document()
    assert not [p for section, data in stated.items() for p in _same_as_default(data, defaults[section], section)]


def test_h200_engines_are_one_setting_so_compiled_graphs_are_shared():
    params = resolve_params(REPO / "params" / "gpu-smollm2-h200.yaml")
    engines = {"select_ckpt": params["select_ckpt"]["engine"], "make_pairs": params["make_pairs"]["engine"],
               "dpo.report": params["dpo"]["report"]["engine"], "infer": params["infer"]["engine"]}
    first = engines["select_ckpt"]
    assert all(e == first for e in engines.values())               # the anchor's keys reach every block
    assert (first["max_model_len"], first["batch_size"], first["gpu_memory_utilization"]) == (8192, 512, 0.85)
    assert first["enforce_eager"] is False and first["max_loras"] == 5 and set(first) == set(ENGINE_DEFAULTS)
    assert first["max_num_batched_tokens"] == 16384   # a stage's engine and `survlm serve`'s prefill alike
    assert parse_section("infer", params["infer"]).engine.max_loras == 5


def test_apply_writes_params_yaml_and_rejects_unknown_keys(tmp_path):
    preset = REPO / "params" / "gpu-smollm2-h200.yaml"

    def apply(*args):
        return subprocess.run([sys.executable, "-m", "survlm.config", "apply", *args, "--out", str(out)],
                              capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src"),
                                                                   "PATH": "/usr/bin:/bin"})

    out = tmp_path / "params.yaml"
    done = apply(str(preset), "infer.test_notes=1472", "sft.lora.r=8", "infer.engine.dtype=bfloat16")
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    want = RECORDED[preset.name]
    want["infer"]["test_notes"], want["sft"]["lora"]["r"] = 1472, 8
    want["infer"]["engine"]["dtype"] = "bfloat16"
    assert written == want and "&" not in out.read_text()         # aliases written out: each block in full
    assert load_config("infer", out).engine.dtype == "bfloat16"
    before = out.read_bytes()
    for args, message in [
            ([str(preset), "infer.test_note=5"], "override 'infer.test_note=5': infer.test_note: unknown key (known: "),
            ([str(preset), "sft.learning_rate=fast"],
             "override 'sft.learning_rate=fast': sft.learning_rate: expected a number, got 'fast'"),
            ([str(preset), "infer.test_notes"], "override 'infer.test_notes': expected section.key=value"),
            ([str(preset), "infer.test_notes.x=1"], "override 'infer.test_notes.x=1': infer.test_notes is not a block"),
            ([str(preset), "trainer.learning_rate=1"],
             "override 'trainer.learning_rate=1': trainer: no such params section"),
            ([str(tmp_path / "none.yaml")], f"{tmp_path / 'none.yaml'}: cannot read the preset")]:
        done = apply(*args)
        assert done.returncode == 1 and done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and out.read_bytes() == before   # nothing written
    empty = tmp_path / "empty.yaml"                              # an empty block changes nothing
    empty.write_text("evaluate:\nsft:\n  learning_rate: 0.002\n")
    assert resolve_params(empty) == {**defaults_document(),
                                     "sft": {**defaults_document()["sft"], "learning_rate": 0.002}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lr: 1.0e-4\n")                    # not TRL's name: learning_rate
    done = apply(str(bad))
    assert done.returncode == 1 and done.stderr.startswith(f"{bad}: sft.lr: unknown key (known: ")


def test_unknown_key_is_one_line_naming_section_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^params\.yaml: select_ckpt\.batch_size: unknown key \(known: "):
        parse_section("select_ckpt", {"val_notes": 2, "batch_size": 2})
    with pytest.raises(ConfigError, match=r"^params\.yaml: evaluate\.survival\.rsf_tree: unknown key"):
        parse_section("evaluate", {"survival": {"rsf_tree": 10}})
    with pytest.raises(ConfigError, match=r"^params\.yaml: infer\.engine: unknown engine setting\(s\): max_len$"):
        parse_section("infer", {"engine": {"max_len": 10}})
    with pytest.raises(ConfigError, match=r"^params\.yaml: infer\.engine: engine kv_cache_gib must be a positive"):
        parse_section("infer", {"engine": {"kv_cache_gib": 0}})
    assert parse_section("infer", {"engine": {"kv_cache_gib": 32}}).engine.kv_cache_gib == 32
    with pytest.raises(ConfigError, match=r"^params\.yaml: sft\.learning_rate: expected a number, got 'fast'$"):
        parse_section("sft", {"learning_rate": "fast"})
    with pytest.raises(ConfigError, match=r"^params\.yaml: sft\.max_steps: expected an integer, got 2\.5$"):
        parse_section("sft", {"max_steps": 2.5})
    with pytest.raises(ConfigError, match=r"^params\.yaml: dpo\.report\.constrained: expected true or false"):
        parse_section("dpo", {"report": {"constrained": "yes"}})

    # the stage itself: exit 1 and that one line on stderr, no traceback
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"make_pairs": {"notes": 2, "temprature": 0.5}}))
    done = subprocess.run([sys.executable, "-m", "survlm.stages.make_pairs", "--prepared", "p", "--base", "b",
                           "--adapter", "a", "--answers", "ans", "--out", "o", "--metrics", "m.json"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "params.yaml: make_pairs.temprature: unknown key (known: " + ", ".join(
            f.name for f in dataclasses.fields(SECTIONS["make_pairs"])) + ")"]


def test_partial_sections_take_the_defaults_and_coerce_yaml_values(tmp_path):
    (tmp_path / "params.yaml").write_text("sft:\n  learning_rate: 5e-3\n  lora: {r: 8}\n  max_steps: 4\n"
                                          "infer:\n  engine: {batch_size: 2}\n  baselines: [sft]\n")
    sft = load_config("sft", tmp_path / "params.yaml")
    assert sft.learning_rate == 0.005 and isinstance(sft.learning_rate, float)      # PyYAML reads `5e-3` as a string
    assert sft.lora == dataclasses.replace(SECTIONS["sft"]().lora, r=8) and sft.max_steps == 4
    assert sft.warmup_steps == SECTIONS["sft"]().warmup_steps
    infer = load_config("infer", tmp_path / "params.yaml")
    # engine keys not given come from params.yaml's engine block, not from BackendSettings' own defaults
    assert infer.engine == BackendSettings.from_params({**ENGINE_DEFAULTS, "batch_size": 2})
    assert infer.baselines == ("sft",) and load_config("dpo", tmp_path / "params.yaml") == SECTIONS["dpo"]()
    # an empty block (`engine:` with nothing under it) is the block's defaults
    assert parse_section("infer", {"engine": None, "decoding_comparison": None}) == SECTIONS["infer"]()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sft.learning_rate = 1.0


def test_a_value_outside_its_choices_is_named():
    assert parse_section("dpo", {"completion": "field"}).completion == "field"
    with pytest.raises(ConfigError, match=r"dpo\.completion: expected one of answer, field, got 'tokens'"):
        parse_section("dpo", {"completion": "tokens"})
