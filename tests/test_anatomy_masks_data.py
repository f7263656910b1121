"""Anatomy masks travel with the data (issue 13): the phantom writes exact lung + heart masks, `s2d prepare
--anatomy-masks DIR` attaches a folder of them to real data, and the collator hands them to a biased model."""

import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from s2d_align.data.anatomy_masks import attach_anatomy_masks
from s2d_align.data.phantom import generate_patient
from s2d_align.data.phantom.render import Anatomy, render_study
from s2d_align.data.summary import SkipLog


def _state(**findings):
    base = {name: None for name in ("cardiomegaly", "edema", "effusion", "opacity", "pneumothorax", "device")}
    return {**base, **findings}


def test_the_mask_costs_the_image_nothing():
    """Rendering the mask draws no random numbers: the image is byte-identical with and without it."""
    state = _state(effusion={"side": "left", "size": "small"}, cardiomegaly={"severity": "mild"})
    plain, _ = render_study(state, Anatomy.draw(np.random.default_rng(3)), np.random.default_rng(4), 96)
    image, _, mask = render_study(state, Anatomy.draw(np.random.default_rng(3)), np.random.default_rng(4), 96,
                                  with_mask=True)
    assert np.array_equal(plain, image) and mask.shape == image.shape and set(np.unique(mask)) <= {0, 255}


def test_phantom_rows_carry_a_mask_of_the_lungs_and_heart(tmp_path):
    rows = generate_patient(tmp_path, seed=0, patient=5, size=128)
    for row in rows:
        (image_path,), (mask_path,) = row["image_paths"], row["anatomy_mask_paths"]
        image, mask = np.asarray(Image.open(image_path)), np.asarray(Image.open(mask_path)) > 127
        assert image.shape == mask.shape
        assert 0.15 < mask.mean() < 0.7  # the chest, not the whole film
        assert not mask[:, :8].any() and not mask[:, -8:].any()  # the outer margins are outside
        heart = next(loc for loc in json.loads(row["locations"]) if loc["finding"] == "heart")["bbox"]
        assert mask[(heart[1] + heart[3]) // 2, (heart[0] + heart[2]) // 2]  # the heart's centre is inside
        # the mask sits on the image's lungs: air is dark, so inside is clearly darker than the body outside it
        assert image[mask].mean() < image[~mask & (image > 40)].mean() - 20


def _dataset(tmp_path, names):
    rows = {"id": [f"s{i}" for i in range(len(names))], "image_paths": [[str(tmp_path / "img" / n)] for n in names]}
    return DatasetDict({"train": Dataset.from_dict(rows)})


def test_prepare_attaches_a_mask_folder_by_image_file_stem(tmp_path):
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        Image.new("L", (32, 32)).save(tmp_path / "masks" / f"{stem}.png")
    dsd, stats = attach_anatomy_masks(_dataset(tmp_path, ["a.jpg", "b.jpg"]), tmp_path / "masks")
    assert [p[0].rsplit("/", 1)[-1] for p in dsd["train"]["anatomy_mask_paths"]] == ["a.png", "b.png"]
    assert stats["studies_without_mask"] == 0
    with pytest.raises(FileNotFoundError, match=r"c\.png"):
        attach_anatomy_masks(_dataset(tmp_path, ["a.jpg", "c.jpg"]), tmp_path / "masks")
    skipped = SkipLog()
    dsd, stats = attach_anatomy_masks(_dataset(tmp_path, ["a.jpg", "c.jpg"]), tmp_path / "masks", "skip", skipped)
    assert dsd["train"]["id"] == ["s0"] and stats["dropped"] == 1
    assert skipped.as_dict()["total"] == 1
    with pytest.raises(FileNotFoundError, match="folder not found"):
        attach_anatomy_masks(_dataset(tmp_path, ["a.jpg"]), tmp_path / "nowhere")


def test_the_collator_hands_masks_to_a_biased_model(tmp_path):
    from s2d_align.tiny import build_tiny
    from s2d_align.training.collator import S2DAlignCollator

    model, processor = build_tiny(vocab_size=512, seed=0, connector="llava", anatomical_bias="masks")
    rows = generate_patient(tmp_path, seed=0, patient=1, size=128)[:2]
    batch = S2DAlignCollator(processor, ("image",), anatomy_masks=True)(rows)
    assert batch["anatomy_masks"].shape == (2, 1, 64, 64)
    expected = np.asarray(Image.open(rows[0]["anatomy_mask_paths"][0]).resize((64, 64), Image.BICUBIC)) / 255
    assert np.abs(batch["anatomy_masks"][0, 0].numpy() - expected).mean() < 0.05
    assert float(model(**batch).loss.detach()) > 0
    with pytest.raises(ValueError, match="anatomy_mask_paths"):
        S2DAlignCollator(processor, ("image",), anatomy_masks=True)([{k: v for k, v in rows[0].items()
                                                                      if k != "anatomy_mask_paths"}])
