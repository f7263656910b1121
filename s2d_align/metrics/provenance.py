"""Where the references come from, and so which R2Gen cleaner scores them.

NLG scores move with the text cleaning (MIMIC-CXR text needs R2Gen's MIMIC cleaner, which keeps its
sentence boundaries), so ``s2d eval`` never picks one silently. It reads the dataset from

- a prepared dataset folder (``s2d prepare --out DIR``) given as ``--references DIR``: its
  ``prepare_summary.json`` records the dataset and whether ``--clean`` was used; the raw report
  (``report_raw`` when cleaned) is what gets labelled and cleaned for scoring;
- a JSONL file whose rows carry ``"dataset": "iu_xray" | "mimic_cxr" | "phantom"``;

or from ``--clean``. A ``--clean`` that contradicts the recorded dataset is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .evaluate import CLEANING_FOR_DATASET
from .jsonl import ReportFile

SUMMARY_NAME = "prepare_summary.json"


@dataclass
class References:
    """Reference reports (raw text: scored through the cleaner, and labelled) and their provenance."""

    reports: ReportFile
    dataset: str | None = None
    kind: str = "raw"
    source: str = ""
    notes: list[str] = field(default_factory=list)


def is_prepared_dataset(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SUMMARY_NAME).is_file()


def load_prepared_references(folder: str | Path, split: str = "test") -> References:
    """The ``split`` of a prepared dataset: ids and reports, with the dataset it records."""
    from datasets import load_from_disk

    folder = Path(folder)
    summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    dataset = summary.get("options", {}).get("dataset")
    dsd = load_from_disk(str(folder))
    if split not in dsd:
        raise ValueError(f"{folder}: no split {split!r} (has {', '.join(dsd)})")
    ds = dsd[split]
    if len(ds) == 0:
        raise ValueError(f"{folder}: split {split!r} is empty")
    reports = ReportFile(f"{folder}[{split}]")
    raw = "report_raw" in ds.column_names
    texts = ds["report_raw"] if raw else ds["report"]
    for line, (rid, text) in enumerate(zip(ds["id"], texts), start=1):
        reports[str(rid)], reports.line_of[str(rid)] = text, line
    # with --clean the stored report is R2Gen-cleaned; the raw one is scored (through the same cleaner,
    # which gives the cleaned text back) and labelled
    return References(reports, dataset, "raw", f"prepared dataset {folder} (split {split})",
                      ["labelled and scored from report_raw (the dataset was prepared with --clean)"] if raw else [])


def jsonl_dataset(path: str | Path) -> str | None:
    """The ``"dataset"`` every row of a report JSONL file names, or None when no row names one."""
    found: dict[str, int] = {}
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue  # read_reports reports malformed lines with their number
                if isinstance(row, dict) and "dataset" in row:
                    found.setdefault(str(row["dataset"]), lineno)
    if len(found) > 1:
        (a, la), (b, lb) = list(found.items())[:2]
        raise ValueError(f"{path}: rows name different datasets ({a!r} on line {la}, {b!r} on line {lb})")
    return next(iter(found), None)


def resolve_cleaning(explicit: str | None, dataset: str | None, where: str) -> tuple[str, str]:
    """``(cleaner, how it was chosen)`` from ``--clean`` and the references' recorded dataset."""
    inferred = None
    if dataset is not None:
        if dataset not in CLEANING_FOR_DATASET:
            raise ValueError(f"{where}: unknown dataset {dataset!r} (expected one of {', '.join(CLEANING_FOR_DATASET)})")
        inferred = CLEANING_FOR_DATASET[dataset]
    if explicit is not None:
        if inferred is not None and explicit != inferred and explicit != "none":
            raise ValueError(f"--clean {explicit} contradicts {where}, which records dataset {dataset!r} "
                             f"(scored with R2Gen's {inferred} cleaner); drop --clean or fix the references")
        return explicit, "given (--clean)"
    if inferred is None:
        raise ValueError(f"{where}: cannot tell which dataset the references come from, so not which R2Gen "
                         "cleaner scores them: pass --clean iu_xray|mimic_cxr, give the prepared dataset folder "
                         "as --references, or add \"dataset\" to the rows")
    return inferred, f"from the references ({dataset})"
