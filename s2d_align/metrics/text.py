"""Report text as the field scores it: R2Gen's ``clean_report_iu_xray`` / ``clean_report_mimic_cxr``.

R2Gen (Chen et al., EMNLP 2020, ``modules/tokenizers.py``) lower-cases a report, drops list
numbering, splits it into sentences at ". ", strips punctuation from each sentence and joins them
with " . ". Its evaluation then scores tokens joined by single spaces (ids decoded back to text),
so we collapse whitespace after cleaning. Re-written here from its description; behaviour kept,
including its quirks (see ``_PUNCT``). Unlike R2Gen's evaluation we never map rare words to
``<unk>`` and never truncate a reference to the generation length.
"""

from __future__ import annotations

import re

# R2Gen's character class '[.,?;*!%^&_+():-\[\]{}]': the ":-\[" inside is a *range* (":" to "["),
# so it also removes ; < = > ? @ (and A-Z, gone after lower-casing) but keeps the hyphen.
_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_NUMBERING = (("1. ", ""), (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
              (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "))
CLEANERS = ("iu_xray", "mimic_cxr", "none")


def _replace_n(text: str, old: str, new: str, times: int) -> str:
    """R2Gen chains ``.replace(old, new)`` a fixed number of times; so do we (same result)."""
    for _ in range(times):
        text = text.replace(old, new)
    return text


def _clean_sentence(sentence: str) -> str:
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    return _PUNCT.sub("", sentence.strip().lower())


def _join(report: str) -> str:
    for old, new in _NUMBERING:
        report = report.replace(old, new)
    sentences = report.strip().lower().split(". ")
    # R2Gen's filter ``if sent_cleaner(sent) != []`` compares a str with a list: it keeps everything
    return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's IU X-Ray cleaning."""
    return _join(_replace_n(report, "..", ".", 3))


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's MIMIC-CXR cleaning (IU's plus newline, "__" and double-space handling)."""
    report = report.replace("\n", " ")
    report = _replace_n(report, "__", "_", 7)
    report = _replace_n(report, "  ", " ", 6)
    report = _replace_n(report, "..", ".", 8)
    return _join(report)


def normalize(report: str, clean: str = "iu_xray") -> str:
    """The text the NLG scorers see: ``clean`` in {"iu_xray", "mimic_cxr", "none"} then tokens
    joined by single spaces ("none" scores the text as given, whitespace collapsed). An empty
    report stays empty: R2Gen's cleaning would turn it into " ." and give it credit for a period."""
    if clean not in CLEANERS:
        raise ValueError(f"unknown text cleaning {clean!r}; choose one of {', '.join(CLEANERS)}")
    if not report.strip():
        return ""
    if clean == "iu_xray":
        report = clean_report_iu_xray(report)
    elif clean == "mimic_cxr":
        report = clean_report_mimic_cxr(report)
    return " ".join(report.split())
