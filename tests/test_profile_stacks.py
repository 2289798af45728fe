"""benchmarks/profile_stacks.py: py-spy's raw stacks split into prefill and decode buckets."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("profile_stacks",
                                              Path(__file__).resolve().parents[1] / "benchmarks" / "profile_stacks.py")
profile_stacks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_stacks)

GEN = "main (x.py:1);GenerationMixin.generate (utils.py:2);GenerationMixin._sample (utils.py:3)"
LAYER = GEN + ";LlamaForCausalLM.forward (m.py:4);LlamaModel.forward (m.py:5);LlamaDecoderLayer.forward (m.py:6)"


def test_samples_land_in_their_first_matching_bucket():
    lines = [
        f"{GEN};GenerationMixin._prefill (utils.py:9);LlamaForCausalLM.forward (m.py:4) 7",
        f"{LAYER};LlamaAttention.forward (m.py:7);sdpa_attention_forward (s.py:8);flash (a.cpp:1) 3",
        f"{LAYER};LlamaMLP.forward (m.py:7);Linear.forward (l.py:1);LoraLayer._mixed_batch_forward (l.py:2);"
        "mkl_blas_sgemm (libmkl.so) 5",
        f"{LAYER};LlamaMLP.forward (m.py:7);Linear.forward (l.py:1);LoraLayer._mixed_batch_forward (l.py:2);"
        "index_kernel (a.cpp:2) 1",
        f"{GEN};LogitsProcessorList.__call__ (p.py:1);fill_next_token_bitmask (x.cc:1) 1",
        "Thread._bootstrap (threading.py:1);TMonitor.run (tqdm.py:2) 4",
        "",
    ]
    got = profile_stacks.bucket_stacks(lines)
    assert (got["samples"], got["outside_generate"], got["prefill"], got["decode"]) == (21, 4, 7, 10)
    assert got["decode_share"] == {
        "logits processors (grammar mask, chosen-token log-prob)": 0.1,
        "attention (SDPA over the KV cache)": 0.3,
        "linear layers: GEMM": 0.5,
        "linear layers: per-row adapter routing (index, gather, scatter)": 0.1,
    }
