"""GPU presets must stay drop-in replacements for params.yaml (same sections and keys)."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("split",):
            out |= _keys(v, prefix + k + ".")
    return out


@pytest.mark.parametrize("preset", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_preset_matches_params_yaml(preset):
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    other = yaml.safe_load(preset.read_text())
    assert _keys(other) == _keys(default)
    assert other["sft"]["quantization"] == "nf4" and other["prepare"]["note_tokens"] >= 2048
