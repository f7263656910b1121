"""Malformed inputs: one clear line naming the file and the entry (or a counted skip), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2d_align.cli import main
from s2d_align.data.annotation import read_annotation
from s2d_align.data.iu_xray import load_iu_xray
from s2d_align.data.summary import SkipLog


def entry(i: int, report: str | None = "The heart is normal in size. No pleural effusion.") -> dict:
    e = {"id": f"CXR{i}_IM-{i:04d}", "image_path": [f"CXR{i}_IM-{i:04d}/0.png"], "split": "train"}
    if report is not None:
        e["report"] = report
    return e


def write(tmp_path: Path, data, name="annotation.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def images(tmp_path: Path, ids: list[int]) -> Path:
    root = tmp_path / "images"
    for i in ids:
        (root / f"CXR{i}_IM-{i:04d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"CXR{i}_IM-{i:04d}" / "0.png")
    return root


def test_misnamed_split_key(tmp_path):
    path = write(tmp_path, {"train": [entry(1)], "val": [], "tes": []})
    with pytest.raises(ValueError, match=r"annotation.json: unknown split key 'tes' \(expected train, val, test\)"):
        read_annotation(path)


def test_missing_split_key(tmp_path):
    path = write(tmp_path, {"train": [entry(1)], "val": []})
    with pytest.raises(ValueError, match=r"annotation.json: missing split key 'test'"):
        read_annotation(path)


def test_invalid_json(tmp_path):
    path = write(tmp_path, '{"train": [ {"id": "a",} ]}')
    with pytest.raises(ValueError, match=r"annotation.json: invalid JSON at line 1 column \d+"):
        read_annotation(path)


def test_duplicate_ids(tmp_path):
    path = write(tmp_path, {"train": [entry(1)], "val": [entry(1)], "test": []})
    with pytest.raises(ValueError, match=r"duplicate id 'CXR1_IM-0001' \(train entry #0 and validation entry #0\)"):
        read_annotation(path)


def test_entry_without_id_or_images(tmp_path):
    bad = entry(2)
    del bad["id"]
    with pytest.raises(ValueError, match=r"annotation.json: train entry #1: missing 'id'"):
        read_annotation(write(tmp_path, {"train": [entry(1), bad], "val": [], "test": []}))
    bad = entry(3)
    bad["image_path"] = []
    with pytest.raises(ValueError, match=r"test entry #0 \(id 'CXR3_IM-0003'\): missing or empty 'image_path'"):
        read_annotation(write(tmp_path, {"train": [], "val": [], "test": [bad]}))


def test_entries_without_report_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, {"train": [entry(1), entry(2, None), entry(3, "  ")], "val": [entry(4)], "test": [entry(5)]})
    skipped = SkipLog()
    dsd = load_iu_xray(path, image_root=images(tmp_path, [1, 2, 3, 4, 5]), skipped=skipped)
    assert dsd["train"]["id"] == ["CXR1_IM-0001"]
    assert skipped.counts == {"entry without report": 1, "empty findings": 1}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("data, expected", [
    ({"train": [], "val": [], "tes": []}, "unknown split key 'tes'"),
    ('{"train": [', "invalid JSON"),
    ({"train": [entry(1), entry(1)], "val": [], "test": []}, "duplicate id 'CXR1_IM-0001'"),
])
def test_cli_prints_one_line(tmp_path, capsys, data, expected):
    path = write(tmp_path, data)
    code, err = run_cli(["prepare", "--dataset", "iu_xray", "--annotation", str(path), "--image-root",
                         str(images(tmp_path, [1])), "--reference", "none", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("s2d prepare: error: ") and expected in err and str(path) in err


def test_cli_unreadable_image_error_then_skip(tmp_path, capsys):
    path = write(tmp_path, {"train": [entry(1), entry(2)], "val": [entry(3)], "test": [entry(4)]})
    root = images(tmp_path, [1, 2, 3, 4])
    (root / "CXR2_IM-0002" / "0.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    code, err = run_cli(["prepare", "--dataset", "iu_xray", "--annotation", str(path), "--image-root", str(root),
                         "--reference", "none", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unreadable image" in err and "CXR2_IM-0002/0.png (sample CXR2_IM-0002)" in err
    code, _ = run_cli(["prepare", "--dataset", "iu_xray", "--annotation", str(path), "--image-root", str(root),
                       "--reference", "none", "--out", str(out), "--missing-images", "skip"], capsys)
    assert code == 0
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["skipped"]["by_reason"] == {"unreadable image": 1}
    assert summary["counts"] == {"train": 1, "validation": 1, "test": 1}


def test_cli_missing_image_root_says_images_are_not_shipped(tmp_path, capsys):
    code, err = run_cli(["prepare", "--dataset", "iu_xray", "--reference", "none", "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "images are not shipped" in err


def test_cli_iu_default_reference_is_retrieval_and_needs_features(tmp_path, capsys):
    # IU X-Ray has one study per patient: same_patient would leave every sample without a reference
    code, err = run_cli(["prepare", "--dataset", "iu_xray", "--image-root", str(tmp_path), "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "one study per patient" in err and "--feature-model PATH" in err and "--reference none" in err
    assert not (tmp_path / "o").exists()


def test_cli_retrieval_without_feature_model(tmp_path, capsys):
    code, err = run_cli(["prepare", "--dataset", "iu_xray", "--image-root", str(tmp_path), "--reference", "retrieval",
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--feature-model" in err
