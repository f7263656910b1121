"""Report text: whitespace normalisation, FINDINGS extraction, and R2Gen's report cleaning.

`clean_report_iu_xray` / `clean_report_mimic_cxr` reproduce R2Gen's tokenizer cleaning
(cuhksz-nlp/R2Gen, modules/tokenizers.py) character for character, quirks included, because papers
score against references cleaned exactly this way (DESIGN section 5: never mix cleaned and raw).
"""

from __future__ import annotations

import re


def normalise(text: str) -> str:
    """Collapse all whitespace runs to one space and strip: the comparison form of a report."""
    return " ".join(text.split())


# R2Gen's character class, kept verbatim: ":-\[" is a range (":" .. "["), so it also strips ;<=>?@
# (and upper-case letters, which are already lower-cased by then).
_R2GEN_STRIP = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _r2gen_sentences(sentences: list[str]) -> str:
    def sent_cleaner(t: str) -> str:
        return _R2GEN_STRIP.sub("", t.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower())

    # R2Gen filters with `sent_cleaner(sent) != []`, which is always true: empty sentences are kept.
    return " . ".join(sent_cleaner(s) for s in sentences) + " ."


def _numbering(t: str) -> str:
    t = t.replace("1. ", "").replace(". 2. ", ". ").replace(". 3. ", ". ").replace(". 4. ", ". ").replace(". 5. ", ". ")
    return t.replace(" 2. ", ". ").replace(" 3. ", ". ").replace(" 4. ", ". ").replace(" 5. ", ". ")


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's IU X-Ray cleaning: lower case, punctuation stripped, sentences joined by " . "."""
    t = report.replace("..", ".").replace("..", ".").replace("..", ".")
    return _r2gen_sentences(_numbering(t).strip().lower().split(". "))


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's MIMIC-CXR cleaning (as IU, plus newline, underscore and double-space collapsing)."""
    t = report.replace("\n", " ")
    for _ in range(7):
        t = t.replace("__", "_")
    for _ in range(6):
        t = t.replace("  ", " ")
    for _ in range(8):
        t = t.replace("..", ".")
    return _r2gen_sentences(_numbering(t).strip().lower().split(". "))


# A section header: upper-case words at the start of a line, then a colon ("FINDINGS:", "PA AND LATERAL:").
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,&/()'-]*?)[ \t]*:", re.MULTILINE)
_FINDINGS = re.compile(r"^FINDINGS?(?: AND IMPRESSIONS?)?$|^FINDINGS?/IMPRESSIONS?$")


def extract_findings_section(text: str) -> str:
    """The FINDINGS section of a free-text report (MIMIC-CXR style), whitespace-normalised; "" if the
    report has no FINDINGS header. The section ends at the next upper-case header (e.g. IMPRESSION:)."""
    headers = list(_HEADER.finditer(text))
    for i, match in enumerate(headers):
        if _FINDINGS.match(match.group(1).strip()):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            return normalise(text[match.end():end])
    return ""
