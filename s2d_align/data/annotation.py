"""Reading R2Gen-format `annotation.json` files (IU X-Ray and MIMIC-CXR) with clear errors.

Format: `{"train": [...], "val": [...], "test": [...]}`, each entry a dict with at least `id`,
`report` and `image_path` (MIMIC-CXR adds `study_id`, `subject_id`). Structural problems (invalid
JSON, a missing or misnamed split key, an entry without an id, a duplicate id) raise one-line
`ValueError`s naming the file and the entry; entries that are merely unusable (no report, empty
report) are skipped and counted by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path

# R2Gen writes "val"; "validation" and MIMIC's "validate" are accepted as the same split.
SPLIT_ALIASES = {"train": "train", "val": "validation", "validation": "validation", "validate": "validation",
                 "test": "test"}


def read_annotation(path: str | Path) -> dict[str, list[dict]]:
    """`{"train"|"validation"|"test": [entry, ...]}` from an R2Gen annotation file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with split keys train/val/test, got {type(data).__name__}")
    return _splits(path, data)


def _splits(path: Path, data: dict) -> dict[str, list[dict]]:
    unknown = [key for key in data if key not in SPLIT_ALIASES]
    if unknown:
        raise ValueError(f"{path}: unknown split key {unknown[0]!r} (expected train, val, test)")
    out: dict[str, list[dict]] = {}
    for key, entries in data.items():
        split = SPLIT_ALIASES[key]
        if split in out:
            raise ValueError(f"{path}: split {split!r} given twice (keys {key!r} and another alias)")
        if not isinstance(entries, list):
            raise ValueError(f"{path}: split {key!r} must be a list of entries, got {type(entries).__name__}")
        out[split] = entries
    missing = [s for s in ("train", "validation", "test") if s not in out]
    if missing:
        wanted = {"validation": "val"}.get(missing[0], missing[0])
        raise ValueError(f"{path}: missing split key {wanted!r} (found {', '.join(map(repr, data)) or 'none'})")
    _check_entries(path, out)
    return out


def _check_entries(path: Path, splits: dict[str, list[dict]]) -> None:
    seen: dict[str, str] = {}
    for split, entries in splits.items():
        for index, entry in enumerate(entries):
            where = f"{path}: {split} entry #{index}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
            if not isinstance(entry.get("id"), (str, int)) or str(entry.get("id")) == "":
                raise ValueError(f"{where}: missing 'id'")
            sid = str(entry["id"])
            if sid in seen:
                raise ValueError(f"{path}: duplicate id {sid!r} ({seen[sid]} and {split} entry #{index})")
            seen[sid] = f"{split} entry #{index}"
            paths = entry.get("image_path")
            if not isinstance(paths, (list, str)) or not paths:
                raise ValueError(f"{where} (id {sid!r}): missing or empty 'image_path'")


def entry_report(entry: dict) -> str | None:
    """The entry's report with whitespace collapsed; None when the entry has no `report` field."""
    report = entry.get("report")
    if report is None:
        return None
    return " ".join(str(report).split())


def entry_images(entry: dict) -> list[str]:
    paths = entry["image_path"]
    return [paths] if isinstance(paths, str) else [str(p) for p in paths]
