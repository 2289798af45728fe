"""The checkpoint rule shared by select_ckpt and dpo: highest field accuracy, ties to the earlier step, and in
dpo the SFT adapter as step 0, so a DPO model ships only when it is more accurate than its SFT."""
import pytest

from survlm.selection import choose_checkpoint, dpo_selection


def _curve(*accs):
    return [{"step": 8 * i, "field_accuracy": a} for i, a in enumerate(accs)]


def test_choose_checkpoint_accuracy_then_earlier_step():
    assert choose_checkpoint(_curve(0.5, 0.7, 0.7, 0.6))["step"] == 8
    assert choose_checkpoint(_curve(0.5, 0.4, 0.9))["step"] == 16
    assert choose_checkpoint(_curve(None, 0.0))["step"] == 8          # unscored ranks below any score
    with pytest.raises(ValueError):
        choose_checkpoint([])


@pytest.mark.parametrize("accs, selected, step, margin, best_dpo_margin", [
    ((0.889, 0.80, 0.75, 0.753), "sft", 0, 0.0, -0.089),   # DPO worse at every checkpoint: SFT ships
    ((0.889, 0.889, 0.85), "sft", 0, 0.0, 0.0),             # a tie is not an improvement
    ((0.889, 0.90, 0.93, 0.91), "dpo", 16, 0.041, 0.041),   # the best DPO checkpoint, not the last
])
def test_dpo_selection_guards_against_worse_dpo(accs, selected, step, margin, best_dpo_margin):
    s = dpo_selection(_curve(*accs))
    assert (s["selected"], s["selected_step"]) == (selected, step)
    assert s["margin_over_sft"] == margin and s["best_dpo_margin_over_sft"] == best_dpo_margin
    assert s["sft_field_accuracy"] == accs[0] and s["selected_field_accuracy"] == max(accs)


def test_dpo_selection_needs_sft_and_a_dpo_checkpoint():
    with pytest.raises(ValueError):
        dpo_selection(_curve(0.5))
    with pytest.raises(ValueError):
        dpo_selection([{"step": 4, "field_accuracy": 0.5}])
