"""Clinical efficacy (CE): P/R/F1 over CheXpert labels of predictions vs references.

Three conventions exist in the literature and give different numbers from the same labels:

``r2gen``   R2Gen / R2GenCMN ``compute_ce``: blank -> 0, uncertain (-1) -> 0, so only 1 is
            positive; micro-averaged P/R/F1 over the 14 observations.
``llmrg4``  LLM-RG4 and S2D-Align's Table 1: uncertain -> 1 (positive), negative/blank -> 0;
            micro over the 14 (headline), plus macro over the 14 and micro/macro over the
            5 observations Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion.
``example`` PromptMRG: positive = 1; P, R, F1 computed per report over the 14 observations
            (0 where undefined, numpy.nan_to_num) and averaged over reports.

Predictions are the hypotheses, references the ground truth: precision = TP / predicted positives.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..labeler import OBSERVATIONS

CONVENTIONS = ("r2gen", "llmrg4", "example")
FIVE = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
Labels = Mapping[str, "int | None"]


def binarize(labels: Labels, convention: str) -> tuple[int, ...]:
    """0/1 per observation (OBSERVATIONS order) under ``convention``."""
    positive = (1, -1) if convention == "llmrg4" else (1,)
    return tuple(int(labels.get(obs) in positive) for obs in OBSERVATIONS)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0  # nan_to_num / sklearn zero_division=0


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    # F1 = 2TP / (2TP + FP + FN): the same number as 2PR/(P+R), and 0 where that is undefined
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(tp, tp + 0.5 * (fp + fn))}


def _counts(pred: Sequence[tuple[int, ...]], ref: Sequence[tuple[int, ...]], j: int) -> tuple[int, int, int]:
    tp = sum(p[j] and r[j] for p, r in zip(pred, ref))
    fp = sum(p[j] and not r[j] for p, r in zip(pred, ref))
    fn = sum(r[j] and not p[j] for p, r in zip(pred, ref))
    return tp, fp, fn


def _micro_macro(per_obs: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    tp, fp, fn = (sum(per_obs[o][k] for o in names) for k in ("tp", "fp", "fn"))
    macro = {k: sum(per_obs[o][k] for o in names) / len(names) for k in ("precision", "recall", "f1")}
    return {"micro": _prf(tp, fp, fn), "macro": macro}


def _example_based(pred: Sequence[tuple[int, ...]], ref: Sequence[tuple[int, ...]]) -> dict[str, float]:
    scores = []
    for p, r in zip(pred, ref):
        tp = sum(a and b for a, b in zip(p, r))
        scores.append(_prf(tp, sum(p) - tp, sum(r) - tp))
    return {k: sum(s[k] for s in scores) / len(scores) for k in ("precision", "recall", "f1")}


def _aligned(pred_labels, ref_labels) -> tuple[list[Labels], list[Labels]]:
    """Accept {id: labels} dicts (same ids) or two equally long sequences."""
    if isinstance(pred_labels, Mapping) and isinstance(ref_labels, Mapping):
        if set(pred_labels) != set(ref_labels):
            raise ValueError("prediction and reference labels cover different ids")
        ids = sorted(pred_labels)
        return [pred_labels[i] for i in ids], [ref_labels[i] for i in ids]
    pred, ref = list(pred_labels), list(ref_labels)
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} prediction label rows vs {len(ref)} reference rows")
    return pred, ref


def compute_ce(pred_labels, ref_labels, convention: str = "llmrg4") -> dict[str, Any]:
    """CE P/R/F1 (headline ``precision``/``recall``/``f1``) under ``convention``, with per-observation
    counts and scores. ``pred_labels`` come from the predictions, ``ref_labels`` from the references."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown CE convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    pred_rows, ref_rows = _aligned(pred_labels, ref_labels)
    if not pred_rows:
        raise ValueError("no label rows to score")
    pred = [binarize(p, convention) for p in pred_rows]
    ref = [binarize(r, convention) for r in ref_rows]
    per_obs: dict[str, dict[str, Any]] = {}
    for j, obs in enumerate(OBSERVATIONS):
        tp, fp, fn = _counts(pred, ref, j)
        per_obs[obs] = {"tp": tp, "fp": fp, "fn": fn, "support": tp + fn, **_prf(tp, fp, fn)}
    all14 = _micro_macro(per_obs, OBSERVATIONS)
    headline = _example_based(pred, ref) if convention == "example" else all14["micro"]
    out: dict[str, Any] = {"convention": convention, **headline, "n_reports": len(pred),
                           "micro": all14["micro"], "macro": all14["macro"]}
    if convention == "llmrg4":
        out["five"] = _micro_macro(per_obs, FIVE)
    out["per_observation"] = per_obs
    return out
