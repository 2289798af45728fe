"""benchmarks/draft_acceptance.py: the replay of vLLM's n-gram drafting over known answers."""
import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "draft_acceptance.py"
spec = importlib.util.spec_from_file_location("draft_acceptance", BENCHMARK)
draft_acceptance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(draft_acceptance)


def test_ngram_draft_follows_the_earliest_occurrence_of_the_longest_suffix():
    draft = draft_acceptance.ngram_draft
    assert draft("xabQRSyabTUVab", 1, 3, 2) == "QR"     # "ab" twice before the end: the earliest one's tokens
    assert draft("xabcQRbcTUabc", 2, 3, 4) == "QRbc"    # "abc" beats the later "bc"
    assert draft("abcd", 2, 3, 4) == ""                 # no suffix n-gram occurs earlier
    assert draft("aXa", 1, 1, 4) == "Xa"                # may run into the suffix itself, as vLLM's does


def test_replay_counts_steps_drafts_and_accepted_tokens():
    replay, draft = draft_acceptance.replay, draft_acceptance.ngram_draft
    # the answer copies the prompt: the first step has nothing to draft from (the prompt's end occurs nowhere
    # earlier) and writes " "; then " " drafts "123" and "34" drafts "567", each kept whole plus one token
    steps, drafted, accepted = replay("note: 12345678", " 12345678", lambda c: draft(c, 1, 2, 3))
    assert steps + accepted == len(" 12345678")
    assert (steps, drafted, accepted) == (3, 2, 6)
    # nothing to copy: one token a step, no draft
    assert replay("abc", "xyz", lambda c: draft(c, 2, 3, 3)) == (3, 0, 0)


def test_earlier_answers_draft_from_the_answer_template():
    earlier = "\0" + '{"age":"61","sex":"m"}'
    d = draft_acceptance.earlier_answers_draft('note 70 yo f{"age":"70","sex', earlier, 4)
    assert d == '":"m'                                  # the template's next tokens, from the earlier answer
