"""CheXpert observation labelers: ``rules`` (offline default) and ``chexbert`` (needs its weights).

``from s2d_align.labeler import label_report, extract_mentions, OBSERVATIONS`` gives the rule
labeler; ``label_reports(texts, labeler=...)`` labels many reports with either backend.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .rules import (NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, Mention, aggregate,
                    extract_mentions, label_report, looks_r2gen_cleaned, split_sentences)

__all__ = ["OBSERVATIONS", "Mention", "split_sentences", "extract_mentions", "label_report",
           "aggregate", "label_reports", "looks_r2gen_cleaned", "get_labeler", "LABELERS", "POSITIVE", "NEGATIVE", "UNCERTAIN"]

LABELERS = ("rules", "chexbert")


def get_labeler(name: str = "rules") -> Callable[[str], dict[str, int | None]]:
    """A function report -> 14 labels. "chexbert" raises RuntimeError (with the reason) when its
    package or weights are missing."""
    if name == "rules":
        return label_report
    if name == "chexbert":
        from .chexbert import CheXbertLabeler

        return CheXbertLabeler()
    raise ValueError(f"unknown labeler {name!r}; choose one of {', '.join(LABELERS)}")


def label_reports(texts: Iterable[str], labeler: str = "rules", progress: bool = False,
                  desc: str = "labelling") -> list[dict[str, int | None]]:
    """Label each report; ``progress`` shows a tqdm bar (stderr)."""
    texts = list(texts)
    fn = get_labeler(labeler)
    if progress:
        from tqdm import tqdm

        texts = tqdm(texts, desc=desc, unit="report")
    return [fn(t) for t in texts]
