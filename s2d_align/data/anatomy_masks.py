"""Lung + heart masks for `anatomical_bias: masks`, attached to a prepared dataset as `anatomy_mask_paths`.

Rule: the mask of image `.../<name>.<ext>` is `<folder>/<name>.png` (the image's file name without its extension:
MIMIC-CXR-JPG's dicom_id, IU X-Ray's image name; both unique). A mask is a grayscale image of the same size as its
radiograph, white (or 1) inside either lung or the heart, black outside. A public source for MIMIC-CXR and
CheXpert is CheXmask (Gaggion et al. 2024, PhysioNet `chexmask-cxr-segmentation-data`: lung and heart
contours/RLE per dicom_id, to be written out as PNGs with this naming); JSRT/SCR and Montgomery/Shenzhen carry
hand-drawn lung (and, for SCR, heart) masks for smaller sets. The phantom writes exact masks itself.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict

from .summary import SkipLog


def mask_path(folder: Path, image_path: str) -> Path:
    return Path(folder) / f"{Path(image_path).stem}.png"


def attach_anatomy_masks(dsd: DatasetDict, folder, missing: str = "error", skipped: SkipLog | None = None
                         ) -> tuple[DatasetDict, dict]:
    """Add `anatomy_mask_paths` (one per image) to every split. A study with an image whose mask is absent is an
    error naming the expected file (`missing="error"`) or is dropped and counted (`"skip"`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"anatomy mask folder not found: {folder}")
    absent: list[str] = []

    def paths(row):
        expected = [mask_path(folder, p) for p in row["image_paths"]]
        gone = [str(p) for p in expected if not p.is_file()]
        if gone:
            absent.append(f"{row['id']}: {gone[0]}")
        return {"anatomy_mask_paths": [str(p.resolve()) for p in expected], "_mask_ok": not gone}

    out = DatasetDict({split: ds.map(paths, desc=f"anatomy masks ({split})") for split, ds in dsd.items()})
    if absent and missing == "error":
        raise FileNotFoundError(f"{len(absent)} studies have images without an anatomy mask in {folder} (the mask of "
                                f"image X.jpg is {folder}/X.png); first: {absent[:3]}. Pass --missing-images skip to "
                                "drop those studies")
    for split, ds in out.items():
        for row_id, ok in zip(ds["id"], ds["_mask_ok"]):
            if not ok and skipped is not None:
                skipped.skip("no anatomy mask", row_id)
        out[split] = ds.filter(lambda ok: ok, input_columns="_mask_ok").remove_columns("_mask_ok")
    return out, {"folder": str(folder.resolve()), "rule": "<folder>/<image file stem>.png",
                 "studies_without_mask": len(absent), "dropped": len(absent) if missing == "skip" else 0}
