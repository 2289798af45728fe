"""survlm.config: the typed params of every stage. params.yaml and the presets (drop-in replacements for it) state
every key and parse without an unknown one, the dataclass defaults are params.yaml's values (so the two cannot
drift), and a key that fits no config stops the stage with one line naming the section and key."""
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from survlm.config import (ENGINE_DEFAULTS, SECTIONS, BackendSettings, ConfigError, load_config, parse_section,
                           to_dict)

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


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_parses(preset):
    params = yaml.safe_load(preset.read_text())
    assert set(params) == set(SECTIONS)
    for section in SECTIONS:
        stated = params[section]
        assert not _stated_keys(SECTIONS[section], stated, section)   # every key, as params.yaml has them
        assert _agrees(to_dict(parse_section(section, stated, preset.name)), stated), section
    # GPU presets: QLoRA and long notes
    assert params["sft"]["quantization"] == "nf4" and params["prepare"]["note_tokens"] >= 2048


def test_unknown_key_is_one_line_naming_section_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^params\.yaml: select_ckpt\.batch_size: unknown key \(known: "):
        parse_section("select_ckpt", {"val_notes": 2, "batch_size": 2})
    with pytest.raises(ConfigError, match=r"^params\.yaml: evaluate\.survival\.rsf_tree: unknown key"):
        parse_section("evaluate", {"survival": {"rsf_tree": 10}})
    with pytest.raises(ConfigError, match=r"^params\.yaml: infer\.engine: unknown engine setting\(s\): max_len$"):
        parse_section("infer", {"engine": {"max_len": 10}})
    with pytest.raises(ConfigError, match=r"^params\.yaml: sft\.lr: expected a number, got 'fast'$"):
        parse_section("sft", {"lr": "fast"})
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
    (tmp_path / "params.yaml").write_text("sft:\n  lr: 5e-3\n  lora: {r: 8}\n  max_steps: 4\n"
                                          "infer:\n  engine: {batch_size: 2}\n  baselines: [sft]\n")
    sft = load_config("sft", tmp_path / "params.yaml")
    assert sft.lr == 0.005 and isinstance(sft.lr, float)      # PyYAML reads `5e-3` as a string
    assert sft.lora == dataclasses.replace(SECTIONS["sft"]().lora, r=8) and sft.max_steps == 4
    assert sft.warmup_steps == SECTIONS["sft"]().warmup_steps
    infer = load_config("infer", tmp_path / "params.yaml")
    # engine keys not given come from params.yaml's engine block, not from BackendSettings' own defaults
    assert infer.engine == BackendSettings.from_params({**ENGINE_DEFAULTS, "batch_size": 2})
    assert infer.baselines == ("sft",) and load_config("dpo", tmp_path / "params.yaml") == SECTIONS["dpo"]()
    # an empty block (`engine:` with nothing under it) is the block's defaults
    assert parse_section("infer", {"engine": None, "decoding_comparison": None}) == SECTIONS["infer"]()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sft.lr = 1.0
