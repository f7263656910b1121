"""CE conventions against numbers computed by hand (arithmetic in the comments)."""

import pytest

from s2d_align.labeler import OBSERVATIONS
from s2d_align.metrics import compute_ce


def _row(**labels):
    named = {k.replace("_", " "): v for k, v in labels.items()}
    assert set(named) <= set(OBSERVATIONS)
    return {obs: named.get(obs) for obs in OBSERVATIONS}


# predictions (hypotheses) and references (ground truth); unlisted observations are blank
PRED = {
    "A": _row(Cardiomegaly=1, Edema=-1, Pleural_Effusion=0),
    "B": _row(Atelectasis=1, Pneumothorax=1),
    "C": _row(No_Finding=1),
    "D": _row(Consolidation=-1),
}
REF = {
    "A": _row(Cardiomegaly=1, Edema=1, Atelectasis=-1),
    "B": _row(Atelectasis=1, Pleural_Effusion=1),
    "C": _row(No_Finding=1),
    "D": _row(Lung_Opacity=1),
}
approx = pytest.approx


def test_r2gen_uncertain_is_negative_micro():
    # positives are 1 only. A: pred {CM}, ref {CM, ED} -> TP 1, FN 1. B: pred {AT, PT}, ref {AT, PE}
    # -> TP 1, FP 1, FN 1. C: NF both -> TP 1. D: pred {}, ref {LO} -> FN 1.
    # TP 3, FP 1, FN 3: P = 3/4, R = 3/6, F1 = 2*3 / (2*3 + 1 + 3) = 0.6
    ce = compute_ce(PRED, REF, "r2gen")
    assert (ce["precision"], ce["recall"], ce["f1"]) == approx((0.75, 0.5, 0.6))


def test_llmrg4_uncertain_is_positive_micro_macro_and_five():
    # positives are 1 or -1. A: pred {CM, ED}, ref {CM, ED, AT} -> TP 2, FN 1. B as above: TP 1, FP 1,
    # FN 1. C: TP 1. D: pred {CO}, ref {LO} -> FP 1, FN 1. TP 4, FP 2, FN 3:
    # P = 4/6, R = 4/7, F1 = 8 / (8 + 2 + 3) = 8/13
    ce = compute_ce(PRED, REF, "llmrg4")
    assert (ce["precision"], ce["recall"], ce["f1"]) == approx((4 / 6, 4 / 7, 8 / 13))
    # per observation (P, R, F1): CM (1,1,1), ED (1,1,1), NF (1,1,1), AT: TP 1 (B) FN 1 (A) -> (1, .5, 2/3),
    # LO FN only, CO FP only, PT FP only, PE FN only -> zeros; the other 6 have no cases -> zeros.
    # macro over 14: P = 4/14, R = 3.5/14, F1 = (3 + 2/3)/14 = 11/42
    assert (ce["macro"]["precision"], ce["macro"]["recall"], ce["macro"]["f1"]) == approx((4 / 14, 0.25, 11 / 42))
    # five (CM, ED, CO, AT, PE): TP = CM + ED + AT = 3, FP = CO = 1, FN = AT(A) + PE(B) = 2
    # micro: P = 3/4, R = 3/5, F1 = 6/9; macro: P = (1+1+0+1+0)/5, R = (1+1+0+.5+0)/5, F1 = (2 + 2/3)/5
    five = ce["five"]
    assert (five["micro"]["precision"], five["micro"]["recall"], five["micro"]["f1"]) == approx((0.75, 0.6, 6 / 9))
    assert (five["macro"]["precision"], five["macro"]["recall"], five["macro"]["f1"]) == approx((0.6, 0.5, 8 / 15))


def test_example_based_promptmrg():
    # positives are 1 only; per report P, R, F1 = TP/(TP + (FP + FN)/2), 0 where undefined:
    # A: TP 1, FP 0, FN 1 -> (1, 1/2, 2/3); B: TP 1, FP 1, FN 1 -> (1/2, 1/2, 1/2); C: (1, 1, 1);
    # D: TP 0, FP 0, FN 1 -> (0, 0, 0). Means: P = 2.5/4, R = 2/4, F1 = (2/3 + 1/2 + 1)/4 = 13/24
    ce = compute_ce(PRED, REF, "example")
    assert (ce["precision"], ce["recall"], ce["f1"]) == approx((0.625, 0.5, 13 / 24))


def test_precision_is_over_predicted_positives():
    """Swapping the arguments swaps P and R: the order (predictions, references) matters."""
    straight = compute_ce(PRED, REF, "r2gen")
    swapped = compute_ce(REF, PRED, "r2gen")
    assert straight["precision"] == approx(swapped["recall"])
    assert straight["recall"] == approx(swapped["precision"])
    assert straight["per_observation"]["Pneumothorax"]["fp"] == 1  # predicted, not in the reference


def test_sequences_and_errors():
    ids = sorted(PRED)
    as_lists = compute_ce([PRED[i] for i in ids], [REF[i] for i in ids], "llmrg4")
    assert as_lists["f1"] == approx(compute_ce(PRED, REF, "llmrg4")["f1"])
    with pytest.raises(ValueError, match="convention"):
        compute_ce(PRED, REF, "chexpert")
    with pytest.raises(ValueError, match="different ids"):
        compute_ce(PRED, {"A": REF["A"]}, "r2gen")
