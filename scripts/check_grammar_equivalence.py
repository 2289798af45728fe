"""Do the two answer grammars constrain decoding identically? xgrammar's compile_json_schema with compact
separators and `compact_json_grammar` (the EBNF that the hf and vLLM backends both use) must allow exactly the
same tokens. This walks every committed prediction's tokens through both and counts the steps where their token
masks differ: with 0, outputs decoded under either grammar are the same outputs.

  python scripts/check_grammar_equivalence.py        # measured: 27 predictions, 12575 steps, 0 differing
"""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    import torch
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from survlm.modeling.backends import compact_json_grammar
    from survlm.schema import load_schema, target_json_schema

    tok = AutoTokenizer.from_pretrained("models/base")
    json_schema = target_json_schema(load_schema())
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=tok.vocab_size)
    compiler = xgr.GrammarCompiler(info)
    old = compiler.compile_json_schema(json.dumps(json_schema), any_whitespace=False, separators=(",", ":"))
    new = compiler.compile_grammar(compact_json_grammar(json_schema))
    rows = steps = differing = 0
    for path in sorted(glob.glob("data/predictions/**/*.jsonl", recursive=True)):
        for line in open(path, encoding="utf-8"):
            raw = json.loads(line).get("raw")
            if not raw:
                continue
            ids = tok(raw if isinstance(raw, str) else raw[0], add_special_tokens=False)["input_ids"]
            matchers = xgr.GrammarMatcher(old), xgr.GrammarMatcher(new)
            masks = [xgr.allocate_token_bitmask(1, info.vocab_size) for _ in matchers]
            rows += 1
            for token in ids:
                for matcher, mask in zip(matchers, masks):
                    matcher.fill_next_token_bitmask(mask)
                steps += 1
                differing += int(not torch.equal(*masks))
                accepted = [m.accept_token(token) for m in matchers]
                if not all(accepted):
                    differing += int(accepted[0] != accepted[1])
                    break
    print(f"{rows} predictions, {steps} decode steps, {differing} with different token masks")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
