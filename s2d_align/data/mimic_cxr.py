"""MIMIC-CXR: from R2Gen's `annotation.json` or from the raw MIMIC-CXR-JPG layout. Never shipped
(credentialed PhysioNet data); every path comes from the user.

Raw layout under `mimic_root` (PhysioNet's own file names; `.csv.gz` accepted too):
    mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ViewPosition, StudyDate, ...
    mimic-cxr-2.0.0-split.csv      dicom_id, study_id, subject_id, split (train / validate / test)
    files/p10/p10000032/s50414267.txt                 the free-text report (MIMIC-CXR reports)
    files/p10/p10000032/s50414267/<dicom_id>.jpg      the images (MIMIC-CXR-JPG)
Raw mode gives one sample per study (id = study id) whose report is the FINDINGS section (or, with
`section="impression"`, the IMPRESSION section) as the official MIMIC-CXR section parser finds it
(`text.extract_section`, its rules listed in `text.extract_findings_section`); studies without it are skipped and
counted. Annotation mode (R2Gen's `annotation.json`, the benchmark's split and reports: what published tables use)
keeps R2Gen's entries (one per image, id = dicom id) and, when `mimic_root` is also given, fills dates and view
positions from the metadata file. R2Gen's reports are FINDINGS only: with `section="impression"` each entry's
IMPRESSION is read from its study's report file (under `reports_root`, else `mimic_root`).
In both modes a sample keeps at most `max_views` images, chosen and ordered by the one view rule
(`processing_s2d.select_views`: frontal first, then lateral); `views` records what was dropped.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import defaultdict
from pathlib import Path

from datasets import DatasetDict
from tqdm.auto import tqdm

from .annotation import entry_images, entry_report, read_annotation
from .images import filter_readable, require_image_root
from .schema import SPLITS, build_dataset_dict, empty_row
from .summary import SkipLog
from .text import SECTIONS, clean_report_mimic_cxr, extract_section
from .views import ViewLog

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
SPLIT_NAMES = {"train": "train", "validate": "validation", "val": "validation", "validation": "validation",
               "test": "test"}
_PATH_IDS = re.compile(r"p(\d+)/s(\d+)/")


def read_csv_rows(root: Path, name: str, required: tuple[str, ...]) -> list[dict]:
    """Rows of `root/name` (or `name.gz`), checking the columns the loader needs."""
    path = next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"MIMIC-CXR file not found: {root / name} (or .gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r} (has {', '.join(reader.fieldnames or [])})")
        return list(reader)


def iso_date(study_date: str) -> str:
    """MIMIC `StudyDate` "21800506" -> "2180-05-06" (dates are shifted, but consistently per patient)."""
    s = str(study_date).strip().split(".")[0]
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}" if re.fullmatch(r"\d{8}", s) else ""


def study_dir(subject: str, study: str) -> Path:
    return Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def load_mimic_cxr(annotation: str | Path | None = None, mimic_root: str | Path | None = None,
                   image_root: str | Path | None = None, *, reports_root: str | Path | None = None,
                   clean: bool = False, missing_images: str = "error", verify_images: bool = True,
                   skipped: SkipLog | None = None, views: ViewLog | None = None,
                   section: str = "findings") -> DatasetDict:
    """MIMIC-CXR as the project's `DatasetDict` (references and key phrases not yet attached).

    `annotation`: R2Gen file (images under `image_root`, R2Gen's `mimic_cxr/images`). Without it,
    `mimic_root` is read in the raw layout (images under `image_root` or else `mimic_root`, reports
    under `reports_root` or else `mimic_root`). `clean` applies R2Gen's `clean_report_mimic_cxr`.
    `views` (a `ViewLog`) sets `max_views` and records what each sample kept. `section`: "findings" or
    "impression", the report section that becomes `report` (a study without it is skipped and counted).
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown report section {section!r}; choose one of {', '.join(SECTIONS)}")
    skipped = skipped if skipped is not None else SkipLog()
    views = views if views is not None else ViewLog()
    if annotation is None and mimic_root is None:
        raise ValueError("MIMIC-CXR is not shipped with s2d-align; pass --annotation PATH (R2Gen annotation.json) "
                         "or --mimic-root DIR (MIMIC-CXR-JPG with its metadata and split CSVs)")
    meta_root = Path(mimic_root).expanduser().resolve() if mimic_root is not None else None
    if annotation is not None:
        root = require_image_root(image_root, "MIMIC-CXR", "the R2Gen mimic_cxr/images folder")
        texts = None
        if section != "findings":
            if reports_root is None and meta_root is None:
                raise ValueError(f"MIMIC-CXR section {section!r} with --annotation: R2Gen's annotation.json holds "
                                 "FINDINGS only; pass --reports-root DIR (or --mimic-root DIR) with the report files "
                                 "files/pNN/pNNNNNNNN/sNNNNNNNN.txt")
            texts = Path(reports_root).resolve() if reports_root else meta_root
        rows = _rows_from_annotation(read_annotation(annotation), root, meta_root, skipped, views, texts, section)
    else:
        images = require_image_root(image_root or meta_root, "MIMIC-CXR", "the MIMIC-CXR-JPG root")
        rows = _rows_from_raw(meta_root, images, Path(reports_root).resolve() if reports_root else meta_root, skipped,
                              views, section)
    kept = filter_readable(rows, missing_images, skipped, verify=verify_images, desc="MIMIC-CXR images")
    if clean:
        for row in kept:
            row["report_raw"], row["report"] = row["report"], clean_report_mimic_cxr(row["report"])
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in kept:
        by_split[row.pop("_split")].append(row)
    return build_dataset_dict(by_split)


def _metadata(meta_root: Path) -> dict[str, dict]:
    rows = read_csv_rows(meta_root, METADATA, ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"))
    return {r["dicom_id"]: r for r in rows}


def _rows_from_annotation(splits: dict[str, list[dict]], root: Path, meta_root: Path | None, skipped: SkipLog,
                          views: ViewLog, reports_root: Path | None = None, section: str = "findings") -> list[dict]:
    """`reports_root` given: the report is `section` of the study's report file, not the annotation's text."""
    meta = _metadata(meta_root) if meta_root is not None else {}
    rows = []
    for split, entries in splits.items():
        for index, entry in enumerate(entries):
            sid, report, paths = str(entry["id"]), entry_report(entry), entry_images(entry)
            if report is None:
                skipped.skip("entry without report", sid)
                continue
            if not report:
                skipped.skip("empty findings", sid)
                continue
            subject, study = _entry_ids(entry, paths, f"{split} entry #{index} (id {sid!r})")
            if reports_root is not None:
                report = _report_section(reports_root, subject, study, section, skipped, sid)
                if report is None:
                    continue
            info = [meta.get(Path(p).stem, {}) for p in paths]
            kept, positions = views.pick(sid, [str(root / p) for p in paths], [i.get("ViewPosition", "") for i in info])
            rows.append(empty_row(
                id=sid, subject_id=subject, study_id=study, study_date=iso_date(info[0].get("StudyDate", "")),
                image_paths=kept, view_positions=positions, report=report, _split=split))
    return rows


def _entry_ids(entry: dict, paths: list[str], where: str) -> tuple[str, str]:
    """subject and study ids from the entry, else from its image path `p10/p10000032/s50414267/...`."""
    subject, study = entry.get("subject_id"), entry.get("study_id")
    match = _PATH_IDS.search(paths[0].replace("\\", "/"))
    if subject is None and match:
        subject = match.group(1)
    if study is None and match:
        study = match.group(2)
    if subject is None or study is None:
        raise ValueError(f"annotation {where}: no 'subject_id'/'study_id' and none in image path {paths[0]!r}")
    return str(subject), str(study)


def _rows_from_raw(meta_root: Path, image_root: Path, reports_root: Path, skipped: SkipLog,
                   views: ViewLog, section: str = "findings") -> list[dict]:
    meta = _metadata(meta_root)
    split_rows = read_csv_rows(meta_root, SPLIT_FILE, ("dicom_id", "study_id", "subject_id", "split"))
    studies: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)  # (subject, study) -> [(dicom, split)]
    for r in split_rows:
        split = SPLIT_NAMES.get(r["split"].strip().lower())
        if split is None:
            raise ValueError(f"{meta_root / SPLIT_FILE}: unknown split {r['split']!r} for dicom {r['dicom_id']}")
        studies[(r["subject_id"], r["study_id"])].append((r["dicom_id"], split))
    rows = []
    for (subject, study), dicoms in tqdm(sorted(studies.items()), desc="MIMIC-CXR studies", disable=len(studies) < 2000):
        row = _raw_study(subject, study, dicoms, meta, image_root, reports_root, skipped, views, section)
        if row is not None:
            rows.append(row)
    return rows


def _raw_study(subject: str, study: str, dicoms: list[tuple[str, str]], meta: dict, image_root: Path,
               reports_root: Path, skipped: SkipLog, views: ViewLog, section: str = "findings") -> dict | None:
    findings = _report_section(reports_root, subject, study, section, skipped, study)
    if findings is None:
        return None
    dicoms = sorted(dicoms)  # the split file's order is arbitrary; dicom ids break ties of the view rule
    paths = [str(image_root / study_dir(subject, study) / f"{d}.jpg") for d, _ in dicoms]
    kept, positions = views.pick(study, paths, [meta.get(d, {}).get("ViewPosition", "") for d, _ in dicoms])
    first = dicoms[paths.index(kept[0])]
    # One split per study in the official file; if a study ever straddles splits, its first kept view decides.
    return empty_row(
        id=study, subject_id=subject, study_id=study, study_date=iso_date(meta.get(first[0], {}).get("StudyDate", "")),
        image_paths=kept, view_positions=positions, report=findings, _split=first[1])


def _report_section(reports_root: Path, subject: str, study: str, section: str, skipped: SkipLog,
                    sample_id: str) -> str | None:
    """`section` of a study's report file; None (skipped and counted) when the file or the section is missing."""
    report_path = reports_root / f"{study_dir(subject, study)}.txt"
    if not report_path.is_file():
        skipped.skip("missing report file", sample_id)
        return None
    text = extract_section(report_path.read_text(encoding="utf-8", errors="replace"), section)
    if not text:
        skipped.skip(f"empty {section}", sample_id)
        return None
    return text
