"""Bootstrap statistics reproduce pycocoevalcap and compute_ce on explicit resamples (studies drawn
with repetition, each copy scored as its own study)."""

import json
from importlib import resources

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from s2d_align.labeler import label_report
from s2d_align.metrics import compute_ce
from s2d_align.metrics.nlg import _meteor_scorer, compute_nlg_with_stats, meteor_unavailable_reason, scorer_inputs
from s2d_align.metrics.uncertainty import CEStats, resample_weights

N = 30


@pytest.fixture(scope="module")
def pairs():
    ann = json.loads(resources.files("s2d_align").joinpath("resources", "iu_xray", "annotation.json").read_text())
    test = ann["test"][:N]
    refs = {e["id"]: e["report"] for e in test}
    preds = {test[i]["id"]: test[(i + 3) % N]["report"] for i in range(N)}
    preds[test[5]["id"]] = refs[test[5]["id"]]  # one exact match (METEOR's one-chunk rule)
    preds[test[6]["id"]] = ""  # one empty prediction
    return preds, refs


def _expand(mapping, ids, row):
    """The resampled corpus as pycocoevalcap would receive it: one key per drawn copy."""
    return {f"{i}#{k}": mapping[i] for i, count in zip(ids, row) for k in range(count)}


@pytest.mark.skipif(meteor_unavailable_reason() is not None, reason="METEOR needs Java")
def test_nlg_resamples_equal_pycocoevalcap(pairs):
    preds, refs = pairs
    point, stats = compute_nlg_with_stats(preds, refs)
    gts, res = scorer_inputs(preds, refs, "iu_xray")
    weights = np.vstack([np.ones(N, dtype=int), resample_weights(N, 1, seed=3)])
    ours = stats.resampled(weights)
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr", "METEOR"):
        assert ours[key][0] == pytest.approx(point[key], abs=1e-9), key  # no resampling: the point estimate
    meteor = _meteor_scorer()  # pycocoevalcap's Meteor (one JVM per process), its compute_score on the copies
    for r in (1,):
        g, h = _expand(gts, stats.ids, weights[r]), _expand(res, stats.ids, weights[r])
        want = {f"BLEU_{k + 1}": v for k, v in enumerate(Bleu(4).compute_score(g, h, verbose=0)[0])}
        want.update(ROUGE_L=Rouge().compute_score(g, h)[0], CIDEr=Cider().compute_score(g, h)[0],
                    METEOR=meteor.compute_score(g, h)[0])
        for key, value in want.items():
            assert ours[key][r] == pytest.approx(value, abs=1e-9), (r, key)
        assert abs(ours["CIDEr"][r] - ours["CIDEr"][0]) > 1e-4  # resampling moved it


def test_ce_resamples_equal_compute_ce(pairs):
    preds, refs = pairs
    ids = sorted(preds)
    pred_labels = [label_report(preds[i]) for i in ids]
    ref_labels = [label_report(refs[i]) for i in ids]
    weights = resample_weights(N, 2, seed=4)
    for convention in ("llmrg4", "r2gen", "example"):
        ours = CEStats(pred_labels, ref_labels, convention).resampled(weights)
        for r, row in enumerate(weights):
            pick = [j for j, count in enumerate(row) for _ in range(count)]
            want = compute_ce([pred_labels[j] for j in pick], [ref_labels[j] for j in pick], convention)
            for key in ("precision", "recall", "f1"):
                assert ours[key][r] == pytest.approx(want[key], abs=1e-12), (convention, key)
            assert ours["macro"]["f1"][r] == pytest.approx(want["macro"]["f1"], abs=1e-12)
            if convention == "llmrg4":
                assert ours["five"]["micro"]["f1"][r] == pytest.approx(want["five"]["micro"]["f1"], abs=1e-12)
            for obs, scores in want["per_observation"].items():
                assert ours["per_observation"][obs]["f1"][r] == pytest.approx(scores["f1"], abs=1e-12), obs


def test_resample_weights_are_seeded_multinomial():
    w = resample_weights(50, 20, seed=7)
    assert w.shape == (20, 50) and (w.sum(1) == 50).all()
    assert (w == resample_weights(50, 20, seed=7)).all() and not (w == resample_weights(50, 20, seed=8)).all()
