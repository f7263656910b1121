"""Checks of a stage's inputs (model folder, dataset on disk) that fail early with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from configuration_s2d import S2DAlignConfig

from .stages import StageSpec


def check_model_folder(model_path) -> Path:
    """The folder of an S2D-Align model (config.json with model_type 's2d_align' and its weights)."""
    folder = Path(model_path)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist (a local S2D-Align folder is expected)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not an S2D-Align model folder: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder} is not an S2D-Align model folder: config.json is not valid JSON ({err})") from None
    if model_type != S2DAlignConfig.model_type:
        raise ValueError(f"{folder} is not an S2D-Align model folder: its config.json has model_type "
                         f"{model_type!r} (expected {S2DAlignConfig.model_type!r})")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise ValueError(f"{folder} is not a complete S2D-Align model folder: it has no model.safetensors weights")
    return folder


def load_splits(dataset_path, spec: StageSpec, splits: dict[str, str]) -> dict:
    """{role: datasets.Dataset} for the given {role: split name}, each checked for the stage's columns."""
    path = Path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    if not (path / "dataset_dict.json").is_file():
        raise ValueError(f"dataset path {path} is not a datasets.DatasetDict saved with save_to_disk "
                         "(no dataset_dict.json)")
    dataset = load_from_disk(str(path))
    if not isinstance(dataset, DatasetDict):  # pragma: no cover - dataset_dict.json implies a DatasetDict
        raise ValueError(f"dataset path {path} holds a single Dataset, not a DatasetDict with splits")
    out = {}
    for role, split in splits.items():
        if split not in dataset:
            raise ValueError(f"dataset {path} has no {split!r} split (it has {sorted(dataset)})")
        missing = [c for c in spec.required_columns if c not in dataset[split].column_names]
        if missing:
            raise ValueError(f"dataset {path} split {split!r} lacks the column(s) {missing} that stage "
                             f"{spec.name} needs")
        if len(dataset[split]) == 0:
            raise ValueError(f"dataset {path} split {split!r} is empty")
        out[role] = dataset[split]
    return out


def count_truncated(dataset, processor) -> int:
    """How many reports of `dataset` are longer than the processor's `max_report_tokens` (they are cut in training,
    without EOS): `S2DAlignProcessor.report_truncation` on the split's reports."""
    return processor.report_truncation(dataset["report"])["truncated"]
