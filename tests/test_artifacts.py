"""The artifact contract: plain prepared records read only through artifacts' accessors, prompt.json carrying the
prompt's and the schema's digests, and the run record beside every adapter. Each reader refuses what does not fit
with one line naming the file."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import SODIUM_PROMPT, record, write_prepared

from survlm.artifacts import (ArtifactError, MissingRunRecord, adapter_run, chat_messages, chat_prompt,
                              check_adapter_run, continued_run, has_target, load_prompt, note_of, read_adapter_run,
                              read_prompt_file, target_of, write_adapter_run)

REPO = Path(__file__).resolve().parents[1]
CHAT_RECORD = {"id": "n0", "labels": {"sodium_meq_l": 138.0}, "messages": [
    {"role": "system", "content": SODIUM_PROMPT}, {"role": "user", "content": "HD3 Na 138."},
    {"role": "assistant", "content": '{"sodium_meq_l":null}'}]}


def test_chat_turns_are_built_from_the_plain_record():
    r = record(0)
    assert note_of(r) == r["text"] and target_of(r) == r["target"] and has_target(r)
    assert chat_prompt(SODIUM_PROMPT, r) == [{"role": "system", "content": SODIUM_PROMPT},
                                             {"role": "user", "content": r["text"]}]
    assert chat_messages(SODIUM_PROMPT, r) == chat_prompt(SODIUM_PROMPT, r) + [
        {"role": "assistant", "content": r["target"]}]
    untargeted = record(1, answer=None)
    assert not has_target(untargeted)
    with pytest.raises(ArtifactError, match="record n1: no target to train on"):
        chat_messages(SODIUM_PROMPT, untargeted)


def test_a_record_of_the_old_chat_layout_is_refused_by_every_accessor(schema):
    from survlm.modeling.sft import prompt_completion
    from survlm.pairs import build_pairs

    for read in (note_of, target_of, has_target, lambda r: chat_prompt("x", r),
                 lambda r: prompt_completion(r, "x"), lambda r: build_pairs(schema, r, "x", None, [], {}, 0)):
        with pytest.raises(ArtifactError, match="record n0: no '(text|target)': not a prepared record of this layout"):
            read(CHAT_RECORD)


def _reads_chat_turns(path: Path) -> list[int]:
    """Lines where a file subscripts or gets a `messages` key: a record read in the chat layout."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        if key == "messages":
            lines.append(node.lineno)
    return lines


# files whose `messages` are not records: the stand-in server reads the turns of the OpenAI requests it answers
NOT_RECORDS = {"benchmarks/client_cost.py"}


def test_no_consumer_reads_records_as_chat_turns():
    """Stages, modeling, the CLI, benchmarks, scripts and test builders get a record's note and target through
    artifacts' accessors; chat turns exist only where chat_prompt / chat_messages build them."""
    files = [p for d in ("src", "benchmarks", "scripts", "tests") for p in (REPO / d).rglob("*.py")
             if str(p.relative_to(REPO)) not in NOT_RECORDS]
    found = {str(p.relative_to(REPO)): lines for p in files if (lines := _reads_chat_turns(p))}
    assert found == {}, found
    assert all(_reads_chat_turns(REPO / name) for name in NOT_RECORDS)   # an exception that is still needed


def test_prompt_json_carries_and_checks_its_digests(tmp_path, schema):
    from survlm.hashing import text_digest

    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text((REPO / "src" / "survlm" / "schemas" / "support2-v1.yaml").read_text())
    prepared = write_prepared(tmp_path / "prepared", {"val": [record(0, split="val")]}, schema_path=str(schema_file))
    info = json.loads((prepared / "prompt.json").read_text())
    assert info["prompt_digest"] == text_digest(SODIUM_PROMPT) and info["schema"]["digest"] == schema.digest
    loaded_schema, loaded_prompt = load_prompt(prepared)
    assert loaded_schema.digest == schema.digest and loaded_prompt == SODIUM_PROMPT

    schema_file.write_text(schema_file.read_text() + "\n# edited after prepare\n")   # another digest
    with pytest.raises(ArtifactError) as exc:
        load_prompt(prepared)
    assert str(exc.value).startswith(f"{prepared / 'prompt.json'}: prepared with schema digest {schema.digest}, but "
                                     f"{schema_file} now has digest ")

    (prepared / "prompt.json").write_text(json.dumps({**info, "system_prompt": "Extract everything."}))
    with pytest.raises(ArtifactError, match="system_prompt does not match its prompt_digest"):
        read_prompt_file(prepared / "prompt.json")
    old = {k: info[k] for k in ("system_prompt", "json_schema", "schema", "schema_path")}   # an older prepare's
    (prepared / "prompt.json").write_text(json.dumps(old))
    with pytest.raises(ArtifactError, match="written by an older prepare"):
        read_prompt_file(prepared / "prompt.json")


def test_a_stage_refuses_a_mismatched_prompt_json_in_one_line(tmp_path, monkeypatch, capsys):
    """make_pairs on records prepared with another schema than the one now at the path: exit 1, one line naming
    prompt.json, nothing written."""
    from survlm.stages import make_pairs
    from survlm.stages.common import run_stage

    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text((REPO / "src" / "survlm" / "schemas" / "support2-v1.yaml").read_text())
    prepared = write_prepared(tmp_path / "prepared", {"pairs": [record(0, split="pairs")]},
                              schema_path=str(schema_file))
    schema_file.write_text(schema_file.read_text().replace("Serum sodium", "Sodium"))
    (tmp_path / "sft_best").mkdir()
    (tmp_path / "sft_best" / "adapter_config.json").write_text("{}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"make_pairs": {"backend": "hf"}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_stage(make_pairs.main, "make_pairs", make_pairs.Paths,
                  ["--prepared", str(prepared), "--base", "base", "--adapter", "sft_best", "--answers", "answers",
                   "--out", "pairs", "--metrics", "m.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and err[0].startswith(f"{prepared / 'prompt.json'}: prepared with")
    assert not any((tmp_path / d).exists() for d in ("pairs", "answers", "m.json"))


def test_run_record_is_read_and_checked(tmp_path, schema):
    from survlm.hashing import text_digest

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(MissingRunRecord, match=f"{adapter}/adapter_run.json: missing: no record"):
        read_adapter_run(adapter)
    sft = adapter_run(base_digest="b" * 16, quantization="nf4", system=SODIUM_PROMPT, schema=schema, stage="sft",
                      step=32)
    assert sft == {"base_digest": "b" * 16, "quantization": "nf4", "prompt_digest": text_digest(SODIUM_PROMPT),
                   "schema_digest": schema.digest, "trained": {"stage": "sft", "step": 32, "source": None}}
    dpo = continued_run(sft, "dpo", 6)
    assert dpo["trained"] == {"stage": "dpo", "step": 6, "source": sft["trained"]}
    assert {k: v for k, v in dpo.items() if k != "trained"} == {k: v for k, v in sft.items() if k != "trained"}
    write_adapter_run(adapter, dpo)
    assert read_adapter_run(adapter) == dpo
    ok = {"base_digest": "b" * 16, "base_source": "models/base", "system": SODIUM_PROMPT, "schema": schema,
          "prompt_source": "data/prepared/prompt.json"}
    assert check_adapter_run(adapter, **ok) == dpo
    assert check_adapter_run(adapter, **{**ok, "base_digest": None}) == dpo   # a base not here: unchecked
    for change, message in (({"base_digest": "c" * 16}, f"base_digest: the adapter was trained with {'b' * 16}, but "
                                                        f"models/base has {'c' * 16}"),
                            ({"system": "Extract."}, "prompt_digest: the adapter was trained with "),
                            ({"schema": dataclasses.replace(schema, digest="d" * 16)}, "schema_digest: ")):
        with pytest.raises(ArtifactError) as exc:
            check_adapter_run(adapter, **{**ok, **change})
        assert str(exc.value).startswith(f"{adapter}/adapter_run.json: {message}")
    no_prompt = {k: v for k, v in dpo.items() if k != "prompt_digest"}
    for broken, message in (("{", "not readable as JSON"), (json.dumps(no_prompt), "prompt_digest: missing"),
                            (json.dumps({**dpo, "quantization": "int8"}), "quantization: must be one of nf4, none")):
        (adapter / "adapter_run.json").write_text(broken)
        with pytest.raises(ArtifactError, match=message):
            read_adapter_run(adapter)


def _old_chat_row(r: dict, prompt: str, answer: str | None) -> list[dict]:
    """The `messages` prepare wrote before records were plain: system prompt, note, and the answer where there is one
    (its construction, verbatim)."""
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": r["text"]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def test_sft_trains_on_exactly_the_text_prepare_wrote_before(tiny_llama_dir, tmp_path, schema):
    """Real SUPPORT2 rows and a user's labelled notes: the chat messages sft builds from the plain record equal
    those of the chat record prepare wrote before, so the tokens SFT trains on (and their loss mask) are the same."""
    from survlm.config import parse_section
    from survlm.modeling.loading import load_tokenizer
    from survlm.modeling.sft import tokenized_example, prompt_completion
    from survlm.schema import system_prompt
    from survlm.stages.prepare import _answer, _path_records, _record, _support2_records

    params = parse_section("prepare", {"max_patients": 12, "note_tokens": 600, "workers": 1})
    rendered, _ = _support2_records(params, "bundled:support2-v1", str(tiny_llama_dir), 1)
    user_file = tmp_path / "notes.csv"
    user_file.write_text("id,text,time,event,sodium_meq_l,heart_rate_bpm\n"
                         "u1,\"Admit date: 03/01/2024. HD 1: Na 131. HD 3: Na 138, HR 92 bpm.\",30,1,138,\n"
                         "u2,\"Admit date: 01/15/2024. HD 3: Na 129, HR 110.\",95,1,133,110\n")
    users, _ = _path_records(parse_section("prepare", {"source": "path", "path": str(user_file)}), schema,
                             str(tiny_llama_dir))
    tok = load_tokenizer(tiny_llama_dir)
    for prompt in (system_prompt(schema, "brief"), system_prompt(schema, "full")):
        for r in rendered + users:
            old = _old_chat_row(r, prompt, _answer(r))
            new = _record(r, r["split"])
            assert len(old) == 3 and has_target(new) and chat_messages(prompt, new) == old
            example = prompt_completion(new, prompt)
            assert example["prompt"] + example["completion"] == old
            assert (tok.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
                    == tok.apply_chat_template(old, tokenize=False))
            if new.get("loss_mask"):   # a user's placeholders: the same characters out of the loss
                assert new["loss_mask"] == r["loss_mask"]
                masked = tokenized_example(tok, example, new["loss_mask"])
                assert 0 < sum(masked["completion_mask"]) < len(masked["input_ids"])
    assert any(r.get("loss_mask") for r in users)
