"""Report text: whitespace normalisation, FINDINGS extraction, and R2Gen's report cleaning.

`clean_report_iu_xray` / `clean_report_mimic_cxr` reproduce R2Gen's tokenizer cleaning
(cuhksz-nlp/R2Gen, modules/tokenizers.py) character for character, quirks included, because papers
score against references cleaned exactly this way (DESIGN section 5: never mix cleaned and raw).
"""

from __future__ import annotations

import re

# One implementation of R2Gen's cleaning in the package: the one the metrics score with.
from ..metrics.text import clean_report_iu_xray, clean_report_mimic_cxr

__all__ = ["normalise", "clean_report_iu_xray", "clean_report_mimic_cxr", "extract_findings_section", "is_findings_header",
           "report_sections", "section_kind", "extract_section", "SECTIONS"]

# The report sections a model can be trained to write (`section: findings | impression`).
SECTIONS = ("findings", "impression")


def normalise(text: str) -> str:
    """Collapse all whitespace runs to one space and strip: the comparison form of a report."""
    return " ".join(text.split())


# -- MIMIC-CXR sections, by the rules of the official parser ----------------------------------------------------------
# PhysioNet's mimic-cxr repository, txt/section_parser.py (`section_text`, `normalize_section_names`) and
# txt/create_section_files.py (which section it keeps). Re-implemented from its rules, listed in
# `extract_findings_section`; only what decides the FINDINGS text is needed here.
_SECTION_HEADER = re.compile(r"\n (?P<name>[A-Z ()/,-]+):\s")
# names (lower case) that are FINDINGS by the official table: the header itself, its misspellings, and two variants
_FINDINGS_NAMES = frozenset({
    "findings", "finding", "findins", "findindgs", "findgings", "findngs", "findnings", "finidngs",
    "reference findings", "chest, two views"})
# names that are IMPRESSION by the official table, its misspellings included ("ndication" is the table's own quirk)
_IMPRESSION_NAMES = frozenset({
    "impression", "conclusion", "findings and impression", "findings/impression", "findings/ impression", "ndication",
    "impresson", "imprression", "imoression", "impressoin", "imprssion", "impresion", "imperssion", "mpression",
    "impession"})
# a name that is none of these main sections but describes the views / the exam is FINDINGS
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
_VIEW_PHRASES = re.compile(
    "chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view"
    "|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|pa and lat")


def section_kind(name: str) -> str:
    """"findings", "impression", or another normalised name, of a section header (without its colon), by the
    official name normalisation (only the two sections we train on are mapped exactly; others keep their name)."""
    name = name.lower().strip()
    if name in _FINDINGS_NAMES:
        return "findings"
    if name in _IMPRESSION_NAMES:
        return "impression"
    main = next((m for m in _MAIN_SECTIONS if m in name), None)
    if main is not None:  # "impression" is tested first: "FINDINGS AND IMPRESSION" is an impression
        return main
    return "findings" if _VIEW_PHRASES.search(name) is not None else name


def is_findings_header(name: str) -> bool:
    """Whether a section header (without its colon) is a FINDINGS header under the official name normalisation."""
    return section_kind(name) == "findings"


def extract_section(text: str, section: str = "findings") -> str:
    """The FINDINGS or IMPRESSION section of a MIMIC-CXR report, whitespace-normalised; "" when it has none. The
    rules of `extract_findings_section`; for IMPRESSION the official table also maps "CONCLUSION:" and
    "FINDINGS AND IMPRESSION:" to it, and of several non-empty ones the last wins (`create_section_files.py`)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown report section {section!r}; choose one of {', '.join(SECTIONS)}")
    found = [body for name, body in report_sections(text)[1:] if section_kind(name) == section and body.strip()]
    return normalise(found[-1]) if found else ""


def report_sections(text: str) -> list[tuple[str, str]]:
    """`(header, text)` of each section of a MIMIC-CXR report, in order; the text before the first header is
    `("", preamble)`. Headers as the official parser finds them (rules 1-2 of `extract_findings_section`)."""
    text = text.replace("\r\n", "\n")
    header = _SECTION_HEADER.search(text)
    if header is None:
        return [("", text)]
    sections = [("", text[: header.start("name")])]
    while header is not None:
        start = header.end()
        line_end = text.find("\n", start)
        following = _SECTION_HEADER.search(text, line_end if line_end >= 0 else start)
        sections.append((header.group("name").strip(), text[start: following.start() if following else len(text)]))
        header = following
    return sections


def extract_findings_section(text: str) -> str:
    """The FINDINGS section of a MIMIC-CXR free-text report, whitespace-normalised; "" when it has none.

    The official MIMIC-CXR section parser's rules (PhysioNet mimic-cxr, txt/section_parser.py and
    txt/create_section_files.py, whose `findings` column this reproduces):
      1. A header is an upper-case name (letters, spaces and ( ) / , -; no digits) at the start of a line that
         begins with a space (every line of a MIMIC-CXR report does), then a colon and one whitespace
         character. A header on the report's very first line, or a line without the leading space, is text.
      2. A section runs from its header to the next header. The next header is looked for from the first line
         break after the section's text starts: when a header's colon is followed directly by a line break, a
         header on the very next line is text of the section ("FINDINGS:\n PORTABLE AP: ..." keeps
         "PORTABLE AP: ..." as FINDINGS text).
      3. Header names are normalised: lower case, stripped; a table maps known names and misspellings
         ("FINDING:", "FINDINS:", "REFERENCE FINDINGS:", "CHEST, TWO VIEWS:" ...) to FINDINGS.
      4. A name not in the table is the first of impression, findings, history, comparison, addendum that it
         contains; one containing none of them but describing the exam ("PA AND LATERAL VIEWS OF THE CHEST:",
         "PORTABLE AP CHEST:", "...TWO VIEWS:", "RIBS:" ...) is FINDINGS.
      5. "FINDINGS AND IMPRESSION:" and "FINDINGS/IMPRESSION:" are IMPRESSION (table, and rule 4 tests impression
         first): a report whose only findings are under such a header has no FINDINGS section.
      6. Empty FINDINGS sections are dropped; of several FINDINGS sections the last one wins.
    Not reproduced: the official script's hand-made overrides for a few dozen named studies (they concern its
    IMPRESSION extraction; it leaves those studies out of its sectioned file altogether).
    """
    return extract_section(text, "findings")
