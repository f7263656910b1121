"""IU X-Ray (Open-i, Indiana University): from R2Gen's `annotation.json` and/or the Open-i XML reports.

Sources (both bundled under `s2d_align/resources/iu_xray`; images are NOT shipped):
- R2Gen `annotation.json`: the split used by every paper (train 2,069 / val 296 / test 590), `report`
  = FINDINGS, `image_path` = `<id>/0.png`, `<id>/1.png`.
- `NLMCXR_reports.tgz`: the 3,955 Open-i XML reports (3,425 with FINDINGS). Each holds FINDINGS and IMPRESSION
  as `AbstractText` elements; `section="impression"` takes the IMPRESSION (from the XML, since R2Gen's file
  has FINDINGS only; the split still comes from the annotation). The R2Gen id of a report is
  its first `parentImage` id without the last `-NNNN` (`CXR2384_IM-0942-1001` -> `CXR2384_IM-0942`,
  in `2384.xml`); this holds for all 2,955 R2Gen entries.

Images resolve against `image_root` in either layout: R2Gen's (`<root>/<id>/0.png`, ...) or Open-i's
flat PNG folder (`<root>/<parentImage id>.png`). IU X-Ray has one study per patient and no study dates.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from tqdm.auto import tqdm

from .annotation import entry_images, entry_report, read_annotation
from .images import filter_readable, require_image_root
from .schema import SPLITS, build_dataset_dict, empty_row
from .summary import SkipLog
from .text import SECTIONS, clean_report_iu_xray, normalise
from .views import ViewLog

RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "iu_xray"
BUNDLED_ANNOTATION = RESOURCES / "annotation.json"
BUNDLED_REPORTS = RESOURCES / "NLMCXR_reports.tgz"
IMAGE_HINT = "the R2Gen iu_xray/images folder, or Open-i's NLMCXR_png folder"


@dataclass(frozen=True)
class XmlReport:
    """One Open-i report: its XML number, FINDINGS and IMPRESSION text ("" if none) and image ids."""

    number: str
    findings: str
    image_ids: tuple[str, ...]
    impression: str = ""

    @property
    def r2gen_id(self) -> str:
        return re.sub(r"-\d+$", "", self.image_ids[0]) if self.image_ids else f"CXR{self.number}"


def extract_findings_from_xml(xml: str | bytes | Path, source: str = "") -> str:
    """The FINDINGS text of one Open-i XML report (whitespace-normalised), "" if it has none.
    `xml` is the document (str/bytes) or a path to it."""
    return _parse_xml(xml, source).findings


def _parse_xml(xml: str | bytes | Path, source: str = "") -> XmlReport:
    if isinstance(xml, Path):
        source, xml = source or str(xml), xml.read_bytes()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ValueError(f"{source or 'IU X-Ray XML'}: malformed XML ({err})") from None
    texts: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = node.get("Label", "").upper()
        if label in ("FINDINGS", "IMPRESSION") and label not in texts:  # the first of each, as before
            texts[label] = normalise("".join(node.itertext()))
    number = Path(source).stem if source else ""
    return XmlReport(number, texts.get("FINDINGS", ""), tuple(p.get("id", "") for p in root.iter("parentImage")),
                     texts.get("IMPRESSION", ""))


def read_xml_reports(reports_tgz: str | Path = BUNDLED_REPORTS) -> dict[str, XmlReport]:
    """All reports of an Open-i `NLMCXR_reports.tgz`, keyed by XML number ("2384")."""
    path = Path(reports_tgz).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"IU X-Ray reports archive not found: {path}")
    stat = path.stat()
    return dict(_read_archive(path, stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=4)  # parsing 3,955 XML files takes a second; the archive is read-only input
def _read_archive(path: Path, size: int, mtime: int) -> dict[str, XmlReport]:
    reports = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    data = tar.extractfile(member).read()
                    report = _parse_xml(data, f"{path}:{member.name}")
                    reports[report.number] = report
    except tarfile.TarError as err:
        raise ValueError(f"{path}: not a readable tar archive ({err})") from None
    if not reports:
        raise ValueError(f"{path}: no .xml reports inside")
    return reports


def xml_number(r2gen_id: str) -> str:
    """`CXR2384_IM-0942` -> `2384` (the XML file name)."""
    match = re.match(r"CXR(\d+)_", r2gen_id)
    return match.group(1) if match else ""


def load_iu_xray(annotation: str | Path | None = None, reports_tgz: str | Path | None = None,
                 image_root: str | Path | None = None, *, clean: bool = False, missing_images: str = "error",
                 verify_images: bool = True, split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                 seed: int = 0, skipped: SkipLog | None = None, views: ViewLog | None = None,
                 section: str = "findings") -> DatasetDict:
    """IU X-Ray as the project's `DatasetDict` (references and key phrases not yet attached).

    - only `annotation` (default: the bundled R2Gen file): its splits and reports;
    - only `reports_tgz`: FINDINGS from the XML, split by a seeded shuffle into `split_fractions`;
    - both: FINDINGS from the XML, splits from the annotation (XML studies outside it are skipped).
    `clean` applies R2Gen's `clean_report_iu_xray` (the original goes to `report_raw`).
    Samples with missing/unreadable images raise or are skipped per `missing_images` ("error"/"skip").
    `views` (a `ViewLog`) sets `max_views`: IU X-Ray records no view positions, so the first images in the
    source's order are kept (R2Gen's `0.png` is the frontal view).
    `section`: "findings" or "impression", the XML section that becomes `report`; a study without it is skipped and
    counted. R2Gen's annotation has FINDINGS only, so "impression" reads the XML (the bundled one unless
    `reports_tgz` is given) with the annotation's split.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown report section {section!r}; choose one of {', '.join(SECTIONS)}")
    if section != "findings" and reports_tgz is None:
        reports_tgz, annotation = BUNDLED_REPORTS, annotation or BUNDLED_ANNOTATION
    skipped = skipped if skipped is not None else SkipLog()
    views = views if views is not None else ViewLog()
    root = require_image_root(image_root, "IU X-Ray", IMAGE_HINT)
    if reports_tgz is None:
        rows = _rows_from_annotation(read_annotation(annotation or BUNDLED_ANNOTATION), root, skipped, views)
    else:
        splits = read_annotation(annotation) if annotation is not None else None
        rows = _rows_from_xml(read_xml_reports(reports_tgz), splits, root, split_fractions, seed, skipped, views,
                              section)
    kept = filter_readable(rows, missing_images, skipped, verify=verify_images, desc="IU X-Ray images")
    if clean:
        for row in kept:
            row["report_raw"], row["report"] = row["report"], clean_report_iu_xray(row["report"])
    return build_dataset_dict(_by_split(kept))


def _by_split(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in rows:
        out[row.pop("_split")].append(row)
    return out


def _row(sample_id: str, split: str, report: str, paths: list[Path], views: ViewLog) -> dict:
    study = f"CXR{xml_number(sample_id)}" if xml_number(sample_id) else sample_id
    # IU X-Ray: one study per patient, dates removed by de-identification, views not recorded.
    kept, positions = views.pick(sample_id, [str(p) for p in paths], [""] * len(paths))
    return empty_row(id=sample_id, subject_id=study, study_id=study, image_paths=kept, view_positions=positions,
                     report=report, _split=split)


def _rows_from_annotation(splits: dict[str, list[dict]], root: Path, skipped: SkipLog, views: ViewLog) -> list[dict]:
    rows = []
    for split, entries in splits.items():
        for entry in entries:
            sid, report = str(entry["id"]), entry_report(entry)
            if report is None:
                skipped.skip("entry without report", sid)
            elif not report:
                skipped.skip("empty findings", sid)
            else:
                rows.append(_row(sid, split, report, [root / p for p in entry_images(entry)], views))
    return rows


def _rows_from_xml(reports: dict[str, XmlReport], splits: dict[str, list[dict]] | None, root: Path,
                   fractions: tuple[float, float, float], seed: int, skipped: SkipLog, views: ViewLog,
                   section: str = "findings") -> list[dict]:
    split_of = {str(e["id"]): s for s, entries in splits.items() for e in entries} if splits else None
    numbers = sorted(reports, key=lambda n: int(n) if n.isdigit() else n)
    random_split = _seeded_splits(numbers, fractions, seed) if split_of is None else {}
    rows = []
    for number in tqdm(numbers, desc="IU X-Ray reports", disable=len(numbers) < 2000):
        report = reports[number]
        sid = report.r2gen_id
        split = split_of.get(sid) if split_of is not None else random_split[number]
        if split is None:
            skipped.skip("not in the annotation's splits", sid)
        elif not getattr(report, section):
            skipped.skip(f"empty {section}", sid)
        elif not report.image_ids:
            skipped.skip("no images listed in the XML", sid)
        else:
            rows.append(_row(sid, split, getattr(report, section), _xml_image_paths(root, sid, report.image_ids),
                             views))
    return rows


def _xml_image_paths(root: Path, sid: str, image_ids: tuple[str, ...]) -> list[Path]:
    """R2Gen layout when `<root>/<id>/` exists (its PNGs in name order), else Open-i's flat layout."""
    folder = root / sid
    if folder.is_dir():
        return sorted(folder.glob("*.png")) or [folder / "0.png"]
    return [root / f"{image_id}.png" for image_id in image_ids]


def _seeded_splits(numbers: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(numbers))
    cut1 = int(round(len(numbers) * fractions[0] / sum(fractions)))
    cut2 = cut1 + int(round(len(numbers) * fractions[1] / sum(fractions)))
    return {numbers[i]: ("train" if rank < cut1 else "validation" if rank < cut2 else "test")
            for rank, i in enumerate(order)}
