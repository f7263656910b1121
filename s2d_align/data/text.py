"""Report text: whitespace normalisation, FINDINGS extraction, and R2Gen's report cleaning.

`clean_report_iu_xray` / `clean_report_mimic_cxr` reproduce R2Gen's tokenizer cleaning
(cuhksz-nlp/R2Gen, modules/tokenizers.py) character for character, quirks included, because papers
score against references cleaned exactly this way (DESIGN section 5: never mix cleaned and raw).
"""

from __future__ import annotations

import re

# One implementation of R2Gen's cleaning in the package: the one the metrics score with.
from ..metrics.text import clean_report_iu_xray, clean_report_mimic_cxr

__all__ = ["normalise", "clean_report_iu_xray", "clean_report_mimic_cxr", "extract_findings_section"]


def normalise(text: str) -> str:
    """Collapse all whitespace runs to one space and strip: the comparison form of a report."""
    return " ".join(text.split())


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
