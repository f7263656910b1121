"""JSONL report files (one ``{"id": ..., "report": ...}`` object per line), read strictly.

Every problem is a ``ValueError`` whose one-line message names the file and the line (and id),
because a silently skipped or duplicated report changes every metric computed from the file.
Blank lines are ignored; ids may be strings or integers (compared as strings).
"""

from __future__ import annotations

import json
from pathlib import Path


class ReportFile(dict):
    """``{id: report}`` read from ``path``, remembering each id's line number for messages."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)
        self.line_of: dict[str, int] = {}

    def where(self, rid: str) -> str:
        return f"{self.path}:{self.line_of[rid]} (id {rid!r})"


def _parse_line(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with \"id\" and \"report\", got {type(row).__name__}")
    if "id" not in row or "report" not in row:
        missing = " and ".join(k for k in ("id", "report") if k not in row)
        raise ValueError(f"{path}:{lineno}: missing key {missing}")
    rid, report = row["id"], row["report"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
        raise ValueError(f"{path}:{lineno}: \"id\" must be a non-empty string or integer, got {rid!r}")
    if not isinstance(report, str):
        raise ValueError(f"{path}:{lineno}: \"report\" of id {rid!r} must be a string, got {type(report).__name__}")
    return str(rid), report


def read_reports(path: str | Path, *, allow_empty: bool = False) -> ReportFile:
    """Read a report JSONL file. ``allow_empty``: keep empty/whitespace reports (predictions may
    legitimately be empty; a reference may not)."""
    out = ReportFile(path)
    with open(path, "rb") as handle:  # FileNotFoundError propagates with the path in it
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            rid, report = _parse_line(out.path, lineno, raw)
            if rid in out:
                raise ValueError(f"{out.path}:{lineno}: duplicate id {rid!r} (first on line {out.line_of[rid]})")
            if not report.strip() and not allow_empty:
                raise ValueError(f"{out.path}:{lineno}: empty report for id {rid!r}")
            out[rid], out.line_of[rid] = report, lineno
    if not out:
        raise ValueError(f"{out.path}: no reports (empty file)")
    return out


def match_ids(predictions: ReportFile, references: ReportFile) -> None:
    """Both files must hold the same ids: scoring a subset silently would change the benchmark."""
    for rid in predictions:
        if rid not in references:
            raise ValueError(f"{predictions.where(rid)}: no reference with this id in {references.path}")
    for rid in references:
        if rid not in predictions:
            raise ValueError(f"{references.where(rid)}: no prediction with this id in {predictions.path}")


def write_jsonl(path: str | Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
