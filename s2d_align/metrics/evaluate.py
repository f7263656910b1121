"""All-in-one evaluation: NLG + CE (+ RadGraph F1 when available), with its provenance."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..labeler import label_reports
from .ce import CONVENTIONS, compute_ce
from .nlg import check_same_ids, compute_nlg
from .radgraph_f1 import compute_radgraph

REFERENCE_KINDS = ("raw", "cleaned")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def label_pairs(predictions: dict[str, str], references: dict[str, str], labeler: str = "rules",
                progress: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """CheXpert labels of every prediction and every reference, keyed by id."""
    ids = sorted(predictions)
    pred = label_reports([predictions[i] for i in ids], labeler, progress, desc="labelling predictions")
    ref = label_reports([references[i] for i in ids], labeler, progress, desc="labelling references")
    return dict(zip(ids, pred)), dict(zip(ids, ref))


def evaluate_reports(predictions: dict[str, str], references: dict[str, str], *,
                     convention: str = "llmrg4", labeler: str = "rules", references_kind: str = "raw",
                     clean: str = "iu_xray", meteor: bool = True, radgraph: bool = True,
                     progress: bool = False, return_labels: bool = False) -> dict[str, Any]:
    """Score generated reports against references (same ids, full sets).

    ``references_kind`` records what the caller passed: "raw" (the dataset's report text) or
    "cleaned" (already R2Gen-cleaned); both go through the same ``clean`` step as the predictions,
    and nothing is ever truncated. ``labeler``: "rules" (offline) or "chexbert" (raises RuntimeError
    with the reason when its weights are not on disk). Empty predictions are scored as empty text
    (they earn nothing) and listed under ``empty_predictions``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown CE convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if references_kind not in REFERENCE_KINDS:
        raise ValueError(f"references_kind must be one of {', '.join(REFERENCE_KINDS)}, got {references_kind!r}")
    check_same_ids(predictions, references)
    empty_refs = sorted(i for i, r in references.items() if not r.strip())
    if empty_refs:
        raise ValueError(f"{len(empty_refs)} empty reference report(s), e.g. id {empty_refs[0]!r}")
    pred_labels, ref_labels = label_pairs(predictions, references, labeler, progress)
    result: dict[str, Any] = {
        "settings": {"ce_convention": convention, "labeler": labeler, "references": references_kind,
                     "references_truncated": False, "text_cleaning": clean,
                     "pycocoevalcap": _version("pycocoevalcap")},
        "n_reports": len(predictions),
        "nlg": compute_nlg(predictions, references, clean=clean, meteor=meteor),
        "ce": compute_ce(pred_labels, ref_labels, convention),
        "radgraph": (compute_radgraph(predictions, references) if radgraph
                     else {"skipped": "RadGraph F1 skipped (radgraph=False)"}),
        "empty_predictions": sorted(i for i, p in predictions.items() if not p.strip()),
    }
    if return_labels:
        result["labels"] = {"predictions": pred_labels, "references": ref_labels}
    return result
