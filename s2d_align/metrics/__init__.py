"""Evaluation as published radiology report generation papers compute it.

- ``compute_nlg``: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D with the pycocoevalcap scorers on
  R2Gen-cleaned text (``text.py``); references are never truncated.
- ``compute_ce``: CheXpert-label P/R/F1 under the ``r2gen``, ``llmrg4`` or ``example`` convention.
- ``compute_radgraph``: RadGraph F1 when the optional package and its weights are present.
- ``evaluate_reports``: all of it, with the convention, labeler and reference kind recorded, and
  bootstrap 95% intervals of every figure (``uncertainty.py``); ``write_outputs`` writes
  metrics.json, metrics.md and the per-observation F1 plot.
- ``compare_systems``: paired permutation test and paired-bootstrap interval of B - A.
"""

from .ce import CONVENTIONS, FIVE, compute_ce
from .evaluate import REFERENCE_KINDS, evaluate_reports, label_pairs
from .jsonl import match_ids, read_reports
from .nlg import NLG_KEYS, compute_nlg, meteor_unavailable_reason
from .radgraph_f1 import compute_radgraph
from .report import (metrics_markdown, plot_per_observation_f1, write_metrics_json, write_metrics_md,
                     write_outputs)
from .text import clean_report_iu_xray, clean_report_mimic_cxr, normalize
from .uncertainty import bootstrap_intervals, compare_systems


def evaluate_module_path() -> str:
    """Path of the ``evaluate`` metric script shipped in the package: ``evaluate.load(<it>)``."""
    from importlib import resources

    return str(resources.files(__name__).joinpath("evaluate_module", "s2d_metrics.py"))

__all__ = ["compute_nlg", "compute_ce", "compute_radgraph", "evaluate_reports", "label_pairs",
           "write_outputs", "write_metrics_json", "write_metrics_md", "plot_per_observation_f1",
           "metrics_markdown", "read_reports", "match_ids", "normalize", "clean_report_iu_xray",
           "clean_report_mimic_cxr", "meteor_unavailable_reason", "CONVENTIONS", "FIVE", "NLG_KEYS",
           "REFERENCE_KINDS", "evaluate_module_path", "bootstrap_intervals", "compare_systems"]
