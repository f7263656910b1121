"""Uncertainty on every number: bootstrap 95% intervals and paired permutation tests.

The unit of resampling is the study (one prediction/reference pair). Each metric is recomputed on each
resample from per-study sufficient statistics cached once, so that 1,000 resamples cost seconds:

- BLEU-n (pycocoevalcap, corpus level): clipped n-gram matches, n-gram counts, hypothesis and
  reference lengths per study (pycocoevalcap's own ``cook_refs``/``cook_test``); a resample's BLEU is
  its summed counts through pycocoevalcap's formula (same ``tiny``/``small`` constants, "closest"
  reference length, brevity penalty on the summed lengths). Not a mean of per-report BLEU.
- ROUGE-L: pycocoevalcap's score is the mean of per-report scores: resample the per-report scores.
- CIDEr-D: the mean of per-report scores, but each score depends on document frequencies taken from
  the references *of the corpus scored*, and on log(corpus size). A resample with a study drawn twice
  counts its reference twice, as pycocoevalcap would on that list. We keep each study's n-gram
  counts and recompute the document frequencies, tf-idf norms and clipped dot products per resample
  with numpy (``_CiderStats``); equal to pycocoevalcap on any resample (tested).
- METEOR: pycocoevalcap's corpus METEOR is computed by the Java scorer (METEOR 1.5) from summed
  alignment statistics (its ``EVAL`` command), not as a mean. We keep each study's statistics line
  (asked once, as pycocoevalcap asks) and aggregate the resample's sums with METEOR 1.5's formula
  (``meteor_from_stats``; English parameters alpha 0.85, beta 0.2, gamma 0.6, delta 0.75, module
  weights 1/0.6/0.8/0.6; a study matched exactly in one chunk counts no chunk), which equals the
  scorer's own ``EVAL`` answer (tested), at numpy speed instead of one Java round trip per resample.
- CE: per-study true/false positive and false negative counts per observation (and per-study P/R/F1
  for the example-based convention); every micro, macro, 5-observation and per-observation figure is
  recomputed from the resample's sums.

Intervals are percentile intervals (2.5th and 97.5th percentiles) over ``n_resamples`` resamples drawn
with ``numpy.random.default_rng(seed)``. ``compare_systems`` is a paired approximate-randomization
test (each study's two outputs swapped with probability 1/2; two-sided p = (1 + #|d*| >= |d|) /
(1 + trials)) plus a paired bootstrap interval of the difference, as RadEval and Koehn (2004) do.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..labeler import OBSERVATIONS
from .ce import FIVE, binarize

N_RESAMPLES = 1000
SEED = 0
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9  # pycocoevalcap bleu_scorer: "small = 1e-9; tiny = 1e-15"


def resample_weights(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(n_resamples, n)`` multiplicities: how often each study is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    weights = np.zeros((n_resamples, n), dtype=np.int64)
    np.add.at(weights, (np.repeat(np.arange(n_resamples), n), draws.ravel()), 1)
    return weights


def percentile_interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(np.asarray(values, dtype=float), [2.5, 97.5])
    return [float(lo), float(hi)]


# -- NLG ------------------------------------------------------------------------------------------------------------
class _BleuStats:
    def __init__(self, gts: dict[str, list[str]], res: dict[str, list[str]], ids: Sequence[str]):
        from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

        rows = [cook_test(res[i][0], cook_refs(gts[i]), eff="closest") for i in ids]
        self.guess = np.array([r["guess"] for r in rows], dtype=float)  # (n, 4)
        self.correct = np.array([r["correct"] for r in rows], dtype=float)
        self.lengths = np.array([[r["testlen"], r["reflen"]] for r in rows], dtype=float)  # (n, 2)

    @staticmethod
    def from_totals(guess: np.ndarray, correct: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """pycocoevalcap's corpus BLEU-1..4 from summed counts; arrays have a leading resample axis."""
        ratios = (correct + _BLEU_TINY) / (guess + _BLEU_SMALL)  # (R, 4)
        bleus = np.cumprod(ratios, axis=1) ** (1.0 / np.arange(1, 5))
        ratio = (lengths[:, 0] + _BLEU_TINY) / (lengths[:, 1] + _BLEU_SMALL)
        with np.errstate(divide="ignore", over="ignore"):
            penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return bleus * penalty[:, None]

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        return self.from_totals(weights @ self.guess, weights @ self.correct, weights @ self.lengths)


class _CiderStats:
    """pycocoevalcap CIDEr-D (n=4, sigma=6) with document frequencies recomputed per weighting."""

    def __init__(self, gts: dict[str, list[str]], res: dict[str, list[str]], ids: Sequence[str], n: int = 4,
                 sigma: float = 6.0):
        from pycocoevalcap.cider.cider_scorer import precook
        from scipy.sparse import csr_matrix

        self.n_reports, self.n = len(ids), n
        hyps = [precook(res[i][0], n) for i in ids]
        refs = [precook(gts[i][0], n) for i in ids]  # one reference per study (checked by the caller)
        vocab: dict[tuple, int] = {}
        for counts in refs + hyps:
            for gram in counts:
                vocab.setdefault(gram, len(vocab))
        self.order = np.array([len(g) - 1 for g in vocab])  # n-gram order of each vocabulary entry
        shape = (len(ids), len(vocab))

        def matrix(rows_of_counts, value):
            r, c, v = [], [], []
            for j, counts in enumerate(rows_of_counts):
                for gram, count in counts.items():
                    r.append(j)
                    c.append(vocab[gram])
                    v.append(value(gram, count, j))
            return csr_matrix((np.array(v, dtype=float), (r, c)), shape=shape)

        # document frequency: each reference counts once per n-gram it contains
        self.presence = matrix(refs, lambda g, c, j: 1.0)
        self.h_sq = matrix(hyps, lambda g, c, j: float(c) ** 2)
        self.r_sq = matrix(refs, lambda g, c, j: float(c) ** 2)
        # clipped dot product: min(tf_h w, tf_r w) * tf_r w = min(tf_h, tf_r) * tf_r * w^2 (w >= 0)
        self.clipped = matrix(hyps, lambda g, c, j: min(c, refs[j].get(g, 0)) * refs[j].get(g, 0))
        # CIDEr's "length" is the number of bigrams (``if n == 1: length += term_freq``, n = order - 1)
        lengths = np.array([[sum(c for g, c in counts.items() if len(g) == 2) for counts in side]
                            for side in (hyps, refs)], dtype=float)
        self.penalty = np.exp(-((lengths[0] - lengths[1]) ** 2) / (2 * sigma ** 2))

    def per_report(self, weights: np.ndarray) -> np.ndarray:
        """``(n_reports, len(weights))``: each study's CIDEr-D score under the document frequencies
        of each weighted corpus (rows of ``weights``)."""
        weights = np.atleast_2d(weights).astype(float)
        df = np.asarray(self.presence.T @ weights.T)  # (vocab, R)
        w2 = (np.log(weights.sum(1))[None, :] - np.log(np.maximum(1.0, df))) ** 2
        scores = np.zeros((self.n_reports, len(weights)))
        for k in range(self.n):
            w2k = np.where((self.order == k)[:, None], w2, 0.0)
            num = np.asarray(self.clipped @ w2k)
            norms = np.sqrt(np.asarray(self.h_sq @ w2k)) * np.sqrt(np.asarray(self.r_sq @ w2k))
            scores += np.where(norms != 0, num / np.where(norms != 0, norms, 1.0), num)
        return scores * self.penalty[:, None] / self.n * 10.0

    def resampled(self, weights: np.ndarray, chunk: int = 100) -> np.ndarray:
        out = []
        for lo in range(0, len(weights), chunk):
            w = weights[lo:lo + chunk].astype(float)
            out.append(np.einsum("rj,jr->r", w, self.per_report(w)) / w.sum(1))
        return np.concatenate(out)


class NLGStats:
    """Per-study sufficient statistics of one system's NLG scores (pycocoevalcap inputs).
    ``meteor_stats``: the Java scorer's statistics line per study, in ``sorted(gts)`` order (from
    ``nlg.meteor_score_and_stats``), or None when METEOR was not computed."""

    def __init__(self, gts: dict[str, list[str]], res: dict[str, list[str]], meteor_stats: list[str] | None = None):
        from pycocoevalcap.rouge.rouge import Rouge

        if any(len(refs) != 1 for refs in gts.values()):
            raise ValueError("bootstrap intervals assume one reference per study")
        self.ids = sorted(gts)
        self.bleu = _BleuStats(gts, res, self.ids)
        self.rouge = np.asarray(Rouge().compute_score({i: gts[i] for i in self.ids}, {i: res[i] for i in self.ids})[1],
                                dtype=float)
        self.cider = _CiderStats(gts, res, self.ids)
        self.meteor = None if meteor_stats is None else meteor_stat_matrix(meteor_stats)

    def resampled(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric on every weighting (rows of ``weights``)."""
        out = {f"BLEU_{k + 1}": v for k, v in enumerate(self.bleu.resampled(weights).T)}
        out["ROUGE_L"] = weights @ self.rouge / weights.sum(axis=1)
        out["CIDEr"] = self.cider.resampled(weights)
        if self.meteor is not None:
            out["METEOR"] = meteor_from_stats(weights @ self.meteor)
        return out


# METEOR 1.5, English ("-l en", default task): alpha, beta, gamma, delta and the weights of its four
# matching stages (exact, stem, synonym, paraphrase)
_METEOR_PARAMS = (0.85, 0.20, 0.60, 0.75)
_METEOR_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])


def meteor_stat_matrix(stats: list[str]) -> np.ndarray:
    """Statistics lines as an ``(n, 23)`` array: test and reference length, test and reference
    function words, per stage (test content, reference content, test function, reference function
    matches), chunks, test and reference matched words. A study matched exactly in one chunk has
    its chunk count set to 0, as the scorer does when it adds statistics up."""
    rows = np.array([[float(x) for x in line.split()] for line in stats], dtype=float).reshape(len(stats), -1)
    if rows.shape[1] != 23:
        raise ValueError(f"unexpected METEOR statistics line ({rows.shape[1]} numbers, expected 23)")
    exact = (rows[:, 21] == rows[:, 0]) & (rows[:, 22] == rows[:, 1]) & (rows[:, 20] == 1)
    rows[exact, 20] = 0
    return rows


def meteor_from_stats(totals: np.ndarray) -> np.ndarray:
    """METEOR 1.5's score from summed statistics (rows: one total per weighting)."""
    alpha, beta, gamma, delta = _METEOR_PARAMS
    t = np.atleast_2d(totals)
    stages = t[:, 4:20].reshape(len(t), 4, 4)
    test_matches = stages[:, :, 0] * delta + stages[:, :, 2] * (1 - delta)
    ref_matches = stages[:, :, 1] * delta + stages[:, :, 3] * (1 - delta)
    test_len = delta * (t[:, 0] - t[:, 2]) + (1 - delta) * t[:, 2]
    ref_len = delta * (t[:, 1] - t[:, 3]) + (1 - delta) * t[:, 3]
    precision = _safe(test_matches @ _METEOR_WEIGHTS, test_len)
    recall = _safe(ref_matches @ _METEOR_WEIGHTS, ref_len)
    fmean = _safe(precision * recall, alpha * precision + (1 - alpha) * recall)
    frag = _safe(t[:, 20], (t[:, 21] + t[:, 22]) / 2)
    return fmean * (1 - gamma * frag ** beta)


# -- CE -------------------------------------------------------------------------------------------------------------
class CEStats:
    """Per-study CE counts under one convention: tp/fp/fn per observation, per-study example scores."""

    def __init__(self, pred_rows: Sequence, ref_rows: Sequence, convention: str):
        pred = np.array([binarize(p, convention) for p in pred_rows], dtype=float)
        ref = np.array([binarize(r, convention) for r in ref_rows], dtype=float)
        self.convention = convention
        self.tp, self.fp, self.fn = pred * ref, pred * (1 - ref), (1 - pred) * ref  # (n, 14)
        tp, fp, fn = self.tp.sum(1), self.fp.sum(1), self.fn.sum(1)
        self.example = np.stack([_safe(tp, tp + fp), _safe(tp, tp + fn), _safe(tp, tp + 0.5 * (fp + fn))], axis=1)

    def resampled(self, weights: np.ndarray) -> dict[str, Any]:
        tp, fp, fn = weights @ self.tp, weights @ self.fp, weights @ self.fn  # (R, 14)
        per_obs = _prf(tp, fp, fn)  # each (R, 14)
        five = [OBSERVATIONS.index(o) for o in FIVE]

        def micro_macro(cols):
            micro = _prf(tp[:, cols].sum(1), fp[:, cols].sum(1), fn[:, cols].sum(1))
            macro = {k: v[:, cols].mean(1) for k, v in per_obs.items()}
            return {"micro": micro, "macro": macro}

        out: dict[str, Any] = {"per_observation": {o: {k: v[:, j] for k, v in per_obs.items()}
                                                    for j, o in enumerate(OBSERVATIONS)}}
        out.update(micro_macro(list(range(len(OBSERVATIONS)))))
        if self.convention == "example":
            ex = weights @ self.example / weights.sum(1, keepdims=True)
            out.update(precision=ex[:, 0], recall=ex[:, 1], f1=ex[:, 2])
        else:
            out.update(out["micro"])
        if self.convention == "llmrg4":
            out["five"] = micro_macro(five)
        return out


def _safe(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _prf(tp, fp, fn) -> dict[str, np.ndarray]:
    return {"precision": _safe(tp, tp + fp), "recall": _safe(tp, tp + fn), "f1": _safe(tp, tp + 0.5 * (fp + fn))}


def _intervals(tree) -> Any:
    """The same nesting with each array of resampled values replaced by its percentile interval."""
    if isinstance(tree, dict):
        return {k: _intervals(v) for k, v in tree.items()}
    return percentile_interval(tree)


def bootstrap_intervals(nlg: NLGStats | None, ce: CEStats | None, n: int, n_resamples: int = N_RESAMPLES,
                        seed: int = SEED) -> dict[str, Any]:
    """95% percentile intervals of every NLG and CE figure: ``{"nlg": {...}, "ce": {...}, "settings"}``."""
    weights = resample_weights(n, n_resamples, seed)
    out: dict[str, Any] = {"settings": {"resamples": n_resamples, "seed": seed, "unit": "study (one id)",
                                        "interval": "95% percentile bootstrap"}}
    if nlg is not None:
        out["nlg"] = _intervals(nlg.resampled(weights))
    if ce is not None:
        out["ce"] = _intervals(ce.resampled(weights))
    return out


# -- paired comparison ----------------------------------------------------------------------------------------------
def _headline(nlg_values: dict | None, ce_values: dict | None) -> dict[str, np.ndarray]:
    out = {}
    if nlg_values is not None:
        out.update({k: np.asarray(v, dtype=float) for k, v in nlg_values.items()})
    if ce_values is not None:
        ce = {k: ce_values[k] for k in ("precision", "recall", "f1")}
        ce["macro_f1"] = ce_values["macro"]["f1"]
        if "five" in ce_values:
            ce["five_micro_f1"] = ce_values["five"]["micro"]["f1"]
            ce["five_macro_f1"] = ce_values["five"]["macro"]["f1"]
        out.update({f"CE_{k}": np.asarray(v, dtype=float) for k, v in ce.items()})
    return out


def _mixed_nlg(a: NLGStats, b: NLGStats, swap: np.ndarray) -> dict[str, np.ndarray]:
    """NLG of the system that takes B's output where ``swap`` (R, n) is 1 and A's elsewhere. The
    CIDEr document frequencies come from the references alone, so per-study scores stay fixed."""
    keep = 1 - swap
    ba, bb = a.bleu, b.bleu
    out = {f"BLEU_{k + 1}": v for k, v in enumerate(_BleuStats.from_totals(
        keep @ ba.guess + swap @ bb.guess, keep @ ba.correct + swap @ bb.correct,
        keep @ ba.lengths + swap @ bb.lengths).T)}
    n = swap.shape[1]
    out["ROUGE_L"] = (keep @ a.rouge + swap @ b.rouge) / n
    ones = np.ones(n)
    ca, cb = a.cider.per_report(ones)[:, 0], b.cider.per_report(ones)[:, 0]
    out["CIDEr"] = (keep @ ca + swap @ cb) / n
    if a.meteor is not None and b.meteor is not None:
        out["METEOR"] = meteor_from_stats(keep @ a.meteor + swap @ b.meteor)
    return out


class _MixedCE:
    def __init__(self, a: CEStats, b: CEStats, swap: np.ndarray):
        self.a, self.b, self.swap = a, b, swap

    def values(self) -> dict[str, Any]:
        keep = 1 - self.swap
        # weights @ counts with one weight row per trial; the mixture is linear in the swap matrix
        out_tp = keep @ self.a.tp + self.swap @ self.b.tp
        out_fp = keep @ self.a.fp + self.swap @ self.b.fp
        out_fn = keep @ self.a.fn + self.swap @ self.b.fn
        per_obs = _prf(out_tp, out_fp, out_fn)
        micro = _prf(out_tp.sum(1), out_fp.sum(1), out_fn.sum(1))
        out: dict[str, Any] = {"macro": {k: v.mean(1) for k, v in per_obs.items()}, "micro": micro}
        if self.a.convention == "example":
            n = self.swap.shape[1]
            ex = (keep @ self.a.example + self.swap @ self.b.example) / n
            out.update(precision=ex[:, 0], recall=ex[:, 1], f1=ex[:, 2])
        else:
            out.update(micro)
        if self.a.convention == "llmrg4":
            cols = [OBSERVATIONS.index(o) for o in FIVE]
            out["five"] = {"micro": _prf(out_tp[:, cols].sum(1), out_fp[:, cols].sum(1), out_fn[:, cols].sum(1)),
                           "macro": {k: v[:, cols].mean(1) for k, v in per_obs.items()}}
        return out


def compare_systems(nlg_a: NLGStats | None, nlg_b: NLGStats | None, ce_a: CEStats | None, ce_b: CEStats | None,
                    n: int, trials: int = N_RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Paired test of B against A on the same references: for each headline metric, the observed
    difference B - A, the permutation p-value and a paired-bootstrap 95% interval of the difference."""
    rng = np.random.default_rng(seed)
    swap = rng.integers(0, 2, size=(trials, n)).astype(float)
    zero_swap, all_swap = np.zeros((1, n)), np.ones((1, n))

    def headline(swap_matrix):
        nlg = _mixed_nlg(nlg_a, nlg_b, swap_matrix) if nlg_a is not None and nlg_b is not None else None
        ce = _MixedCE(ce_a, ce_b, swap_matrix).values() if ce_a is not None and ce_b is not None else None
        return _headline(nlg, ce)

    a_obs, b_obs = headline(zero_swap), headline(all_swap)
    perm_x, perm_y = headline(swap), headline(1 - swap)
    weights = resample_weights(n, trials, seed + 1)
    boot_a = _headline(nlg_a.resampled(weights) if nlg_a else None, ce_a.resampled(weights) if ce_a else None)
    boot_b = _headline(nlg_b.resampled(weights) if nlg_b else None, ce_b.resampled(weights) if ce_b else None)
    out: dict[str, Any] = {"settings": {"trials": trials, "seed": seed, "unit": "study (one id)",
                                        "test": "paired approximate randomization (two-sided)",
                                        "interval": "95% paired percentile bootstrap of B - A"},
                           "metrics": {}}
    for key in a_obs:
        observed = float(b_obs[key][0] - a_obs[key][0])
        permuted = perm_y[key] - perm_x[key]
        extreme = int(np.sum(np.abs(permuted) >= abs(observed) - 1e-12))
        out["metrics"][key] = {"A": float(a_obs[key][0]), "B": float(b_obs[key][0]), "difference": observed,
                               "p_value": (1 + extreme) / (1 + trials),
                               "difference_ci": percentile_interval(boot_b[key] - boot_a[key])}
    return out
