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
    out, absent = DatasetDict(), []  # absent: "id: first missing mask" per study without all its masks
    for split, ds in dsd.items():
        expected = [[mask_path(folder, p) for p in images] for images in ds["image_paths"]]
        gone = [next((str(m) for m in masks if not m.is_file()), None) for masks in expected]
        absent += [f"{row_id}: {missing_mask}" for row_id, missing_mask in zip(ds["id"], gone) if missing_mask]
        if skipped is not None and missing != "error":
            for row_id in (i for i, g in zip(ds["id"], gone) if g):
                skipped.skip("no anatomy mask", row_id)
        ds = ds.add_column("anatomy_mask_paths", [[str(m.resolve()) for m in masks] for masks in expected])
        out[split] = ds.select([i for i, g in enumerate(gone) if g is None])
    if absent and missing == "error":
        raise FileNotFoundError(f"{len(absent)} studies have images without an anatomy mask in {folder} (the mask of "
                                f"image X.jpg is {folder}/X.png); first: {absent[:3]}. Pass --missing-images skip to "
                                "drop those studies")
    return out, {"folder": str(folder.resolve()), "rule": "<folder>/<image file stem>.png",
                 "studies_without_mask": len(absent), "dropped": len(absent) if missing == "skip" else 0}
