"""NLG metrics equal pycocoevalcap's own scorers, called here directly, on real IU report pairs."""

import json
from importlib import resources

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from s2d_align.metrics import compute_nlg, normalize
from s2d_align.metrics import nlg as nlg_module


@pytest.fixture(scope="module")
def iu_pairs():
    """Each IU test-split report (reference) paired with the next test report (prediction)."""
    ann = json.loads(resources.files("s2d_align").joinpath("resources", "iu_xray", "annotation.json").read_text())
    test = ann["test"]
    refs = {e["id"]: e["report"] for e in test}
    preds = {test[i]["id"]: test[(i + 1) % len(test)]["report"] for i in range(len(test))}
    return preds, refs


@pytest.fixture(scope="module")
def ours(iu_pairs):
    return compute_nlg(*iu_pairs)  # METEOR included: one JVM start for this module


@pytest.fixture(scope="module")
def direct(iu_pairs):
    preds, refs = iu_pairs
    gts = {i: [normalize(refs[i])] for i in refs}
    res = {i: [normalize(preds[i])] for i in refs}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU_{n + 1}": b for n, b in enumerate(bleu)}
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    out["METEOR"] = Meteor().compute_score(gts, res)[0]  # its own JVM, independent of ours
    return out


def test_equals_direct_pycocoevalcap(ours, direct, iu_pairs):
    assert ours["n_reports"] == len(iu_pairs[1]) == 590
    for key in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr", "METEOR"):
        assert ours[key] == pytest.approx(direct[key], abs=1e-9), key
    assert 0.05 < ours["BLEU_4"] < ours["BLEU_1"] < 1  # real, non-trivial text


def test_r2gen_cleaning_by_hand():
    report = ("Normal cardiomediastinal silhouette. There is no focal consolidation. There are no XXXX of "
              "a large pleural effusion.")
    assert normalize(report) == ("normal cardiomediastinal silhouette . there is no focal consolidation . "
                                 "there are no xxxx of a large pleural effusion .")
    # "1. " and ". 2. " numbering dropped; , ( ) ; removed; < > removed by R2Gen's ":-\[" range; "-" kept
    assert normalize("1. Left pleural effusion, small. 2. Air-space disease (mild); <no> XXXX.") == \
        "left pleural effusion small . air-space disease mild no xxxx ."
    assert normalize("Line one\nline two..", "mimic_cxr") == "line one line two ."
    assert normalize("Keep, AS given.", "none") == "Keep, AS given."
    with pytest.raises(ValueError, match="cleaning"):
        normalize("x", "ptb")


def test_references_are_never_truncated():
    """One codebase scored against references cut to 100 tokens; we score the whole reference."""
    long_ref = " ".join(["the lungs are clear ."] * 30)  # 150 tokens
    pred = " ".join(["the lungs are clear ."] * 5)
    got = compute_nlg({"a": pred}, {"a": long_ref}, meteor=False)
    full = Bleu(4).compute_score({"a": [long_ref]}, {"a": [pred]}, verbose=0)[0]
    cut = Bleu(4).compute_score({"a": [" ".join(long_ref.split()[:100])]}, {"a": [pred]}, verbose=0)[0]
    assert got["BLEU_1"] == pytest.approx(full[0], abs=1e-12)
    assert abs(full[0] - cut[0]) > 1e-3  # truncation would have shown


def test_meteor_unavailable_without_java(monkeypatch):
    monkeypatch.setattr(nlg_module.shutil, "which", lambda name: None)
    got = compute_nlg({"a": "no effusion ."}, {"a": "no pleural effusion ."})
    assert got["METEOR"] is None and "java" in got["meteor_status"]
    assert got["BLEU_1"] > 0


def test_ids_must_match():
    with pytest.raises(ValueError, match="no reference"):
        compute_nlg({"a": "x", "b": "y"}, {"a": "x"}, meteor=False)
    with pytest.raises(ValueError, match="no prediction"):
        compute_nlg({"a": "x"}, {"a": "x", "b": "y"}, meteor=False)


def test_empty_prediction_scores_zero():
    assert normalize("  ") == ""  # not R2Gen's " ." (which would earn a matched period)
    got = compute_nlg({"a": "", "b": "no effusion ."}, {"a": "heart normal .", "b": "no effusion ."}, meteor=False)
    per_report_rouge = Rouge().compute_score({"a": ["heart normal ."], "b": ["no effusion ."]},
                                             {"a": [""], "b": ["no effusion ."]})[1]
    assert list(per_report_rouge) == [0.0, 1.0]
    assert got["ROUGE_L"] == pytest.approx(0.5)
