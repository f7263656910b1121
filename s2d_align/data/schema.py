"""The one dataset schema every loader produces and the training code consumes.

Each split (`train`, `validation`, `test`) of the `DatasetDict` has the columns of `BASE_FEATURES`:
    id              str, unique across the whole DatasetDict
    subject_id      str (patient), study_id str, study_date str (ISO date, "" when unknown)
    image_paths     list[str], absolute paths, 1..max_views views ordered by the view rule (frontal first)
    view_positions  list[str] ("PA", "LATERAL", ...; "" when unknown), one per image
    report          str, the FINDINGS text, never empty
    reference       str, stage-2 reference report ("" when none); reference_id str ("" when none)
    key_phrases     list[str], stage-3 key phrases
    labels          str, JSON of the 14 CheXpert observations (1/0/-1/null), "" when unknown
plus dataset-specific string extras (`report_raw` with --clean; phantom: `findings`, `locations`), and optionally
    anatomy_mask_paths  list[str], one lung + heart mask image per entry of `image_paths`, same order (white inside
                    the lungs or the heart); what `anatomical_bias: masks` reads. The phantom writes exact ones.
Building splits through `build_dataset_dict` keeps column types identical across splits, even when a
split is empty, so `DatasetDict.save_to_disk` / `load_from_disk` round-trip cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from datasets import Dataset, DatasetDict, Features, List, Value

from processing_s2d import FRONTAL_VIEWS  # noqa: F401  (re-exported; the view rule is processing_s2d.select_views)

from ..labeler.rules import OBSERVATIONS

SPLITS = ("train", "validation", "test")

# The 14 CheXpert observations, in the labeler's order (one list for the whole project).
CHEXPERT_OBSERVATIONS = OBSERVATIONS

BASE_FEATURES = Features(
    {
        "id": Value("string"),
        "subject_id": Value("string"),
        "study_id": Value("string"),
        "study_date": Value("string"),
        "image_paths": List(Value("string")),
        "view_positions": List(Value("string")),
        "report": Value("string"),
        "reference": Value("string"),
        "reference_id": Value("string"),
        "key_phrases": List(Value("string")),
        "labels": Value("string"),
    }
)



def empty_row(**values) -> dict:
    """A row with every base column present (defaults: "" / []), overridden by `values`."""
    row = {name: [] if isinstance(feat, List) else "" for name, feat in BASE_FEATURES.items()}
    row.update(values)
    return row


def features_for(rows: Iterable[Mapping]) -> Features:
    """Base features plus a string (or, for a list value, list-of-strings) column for each extra key in `rows`."""
    feats = dict(BASE_FEATURES)
    for row in rows:
        for key in row:
            if key not in feats:
                feats[key] = List(Value("string")) if isinstance(row[key], list) else Value("string")
    return Features(feats)


def build_dataset(rows: list[dict], features: Features) -> Dataset:
    """`Dataset.from_dict` column by column, so an empty split still gets the full schema."""
    columns = {name: [row.get(name, [] if isinstance(feat, List) else "") for row in rows]
               for name, feat in features.items()}
    return Dataset.from_dict(columns, features=features)


def build_dataset_dict(rows_by_split: Mapping[str, list[dict]]) -> DatasetDict:
    """One `DatasetDict` with `train`/`validation`/`test` sharing the same features."""
    all_rows = [row for split in SPLITS for row in rows_by_split.get(split, [])]
    check_unique_ids(all_rows)
    feats = features_for(all_rows)
    return DatasetDict({split: build_dataset(list(rows_by_split.get(split, [])), feats) for split in SPLITS})


def check_unique_ids(rows: Iterable[Mapping], source: str = "dataset") -> None:
    """Raise ValueError naming the first id that occurs twice (ids are unique across all splits)."""
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"{source}: duplicate id {row['id']!r}")
        seen.add(row["id"])


def labels_to_json(labels: Mapping[str, int | None]) -> str:
    """The `labels` column: JSON of all 14 observations in canonical order (missing -> null)."""
    return json.dumps({obs: labels.get(obs) for obs in CHEXPERT_OBSERVATIONS})
