"""All-in-one evaluation: NLG + CE (+ RadGraph F1 when available), with its provenance."""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..labeler import label_reports
from .ce import CONVENTIONS, compute_ce
from .nlg import check_same_ids, compute_nlg_with_stats
from .radgraph_f1 import compute_radgraph
from .uncertainty import N_RESAMPLES, SEED, CEStats, bootstrap_intervals

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


# The R2Gen cleaner each dataset's references are scored with (the phantom is written in IU phrasing).
CLEANING_FOR_DATASET = {"iu_xray": "iu_xray", "mimic_cxr": "mimic_cxr", "phantom": "iu_xray"}


def evaluate_reports(predictions: dict[str, str], references: dict[str, str], *,
                     convention: str = "llmrg4", labeler: str = "rules", references_kind: str = "raw",
                     clean: str | None = None, meteor: bool = True, radgraph: bool = True,
                     progress: bool = False, return_labels: bool = False,
                     label_references: dict[str, str] | None = None, bootstrap: int = N_RESAMPLES,
                     seed: int = SEED, clean_source: str | None = None) -> dict[str, Any]:
    """Score generated reports against references (same ids, full sets).

    ``references_kind`` records what the caller passed: "raw" (the dataset's report text) or
    "cleaned" (already R2Gen-cleaned); both go through the same ``clean`` step as the predictions,
    and nothing is ever truncated. ``clean``: "iu_xray" or "mimic_cxr" (R2Gen's cleaner of the
    references' dataset; MIMIC-CXR text needs its own) or "none". Not given, it falls back to
    "iu_xray" with a warning, and the outputs say it was not given. ``label_references``: the text
    CE labels are taken from for each reference (default ``references``): pass the raw reports when
    ``references`` are cleaned. ``labeler``: "rules" (offline) or "chexbert" (raises RuntimeError
    with the reason when its weights are not on disk). Empty predictions are scored as empty text
    (they earn nothing) and listed under ``empty_predictions``. ``bootstrap``: resamples of studies
    for the 95% intervals of every NLG and CE figure (``intervals``; 0 skips them), seeded by ``seed``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown CE convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if references_kind not in REFERENCE_KINDS:
        raise ValueError(f"references_kind must be one of {', '.join(REFERENCE_KINDS)}, got {references_kind!r}")
    if clean is None:
        warnings.warn("evaluate_reports: no text cleaning given; using R2Gen's IU X-Ray cleaner. Pass "
                      "clean='mimic_cxr' for MIMIC-CXR references (or clean='iu_xray' to silence this).",
                      UserWarning, stacklevel=2)
        clean, clean_source = "iu_xray", "default (not given)"
    check_same_ids(predictions, references)
    empty_refs = sorted(i for i, r in references.items() if not r.strip())
    if empty_refs:
        raise ValueError(f"{len(empty_refs)} empty reference report(s), e.g. id {empty_refs[0]!r}")
    pred_labels, ref_labels = label_pairs(predictions, label_references or references, labeler, progress)
    nlg, nlg_stats = compute_nlg_with_stats(predictions, references, clean=clean, meteor=meteor)
    ce = compute_ce(pred_labels, ref_labels, convention)
    result: dict[str, Any] = {
        "settings": {"ce_convention": convention, "labeler": labeler, "references": references_kind,
                     "references_truncated": False, "text_cleaning": clean,
                     "text_cleaning_source": clean_source or "given",
                     "ce_labels_from": "raw reference text" if label_references else "the references as given",
                     "pycocoevalcap": _version("pycocoevalcap")},
        "n_reports": len(predictions),
        "nlg": nlg,
        "ce": ce,
        "radgraph": (compute_radgraph(predictions, references) if radgraph
                     else {"skipped": "RadGraph F1 skipped (radgraph=False)"}),
        "empty_predictions": sorted(i for i, p in predictions.items() if not p.strip()),
    }
    if bootstrap:
        ids = sorted(predictions)
        ce_stats = CEStats([pred_labels[i] for i in ids], [ref_labels[i] for i in ids], convention)
        result["intervals"] = bootstrap_intervals(nlg_stats, ce_stats, len(ids), bootstrap, seed)
        if nlg["METEOR"] is None:
            result["intervals"]["nlg"].pop("METEOR", None)
    if return_labels:
        result["labels"] = {"predictions": pred_labels, "references": ref_labels}
    return result


def system_stats(predictions: dict[str, str], references: dict[str, str], *, convention: str, labeler: str,
                 clean: str, meteor: bool, label_references: dict[str, str] | None = None):
    """Per-study NLG and CE statistics of one system, for ``uncertainty.compare_systems``."""
    check_same_ids(predictions, references)
    pred_labels, ref_labels = label_pairs(predictions, label_references or references, labeler)
    nlg, nlg_stats = compute_nlg_with_stats(predictions, references, clean=clean, meteor=meteor)
    ids = sorted(predictions)
    return nlg, nlg_stats, CEStats([pred_labels[i] for i in ids], [ref_labels[i] for i in ids], convention)
