"""Multi-view by stitching (`multiview="stitch"`, RRG24's input): one image per study, one image's prefix."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from s2d_align.tiny import RAD_DINO_MEAN, RAD_DINO_STD, build_tiny
from conftest import adamw_steps

REPORTS = ["The heart is normal in size. The lungs are clear.", "Small left pleural effusion. No pneumothorax."]
IMAGE_SIZE, PATCH, N_MEM = 64, 8, 8  # build_tiny's defaults: 64 px input, an 8 x 8 patch grid, 8 memory queries


@pytest.fixture(scope="module")
def stitched():
    """{connector: (model, processor)} of tiny stitching models."""
    out = {}
    for connector in ("sma", "llava"):
        model, processor = build_tiny(vocab_size=512, seed=0, connector=connector, multiview="stitch")
        out[connector] = (model.eval(), processor)
    return out


def _noise(width: int, height: int, seed: int) -> Image.Image:
    """A grayscale noise image as RGB (what `load_radiograph` returns), so any misplaced pixel shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L").convert("RGB")


def _reference_stitch(views: list, side: int) -> np.ndarray:
    """The documented rule written out again with PIL and numpy (not calling `stitch_views`), normalized as Rad-DINO
    does: views to the common height min(side, smallest height), side by side, fitted into a black side x side
    square, centred; then (x / 255 - mean) / std, channels first."""
    height = min([side] + [v.height for v in views])
    parts = [v.resize((max(1, round(v.width * height / v.height)), height), Image.BICUBIC) for v in views]
    strip = np.concatenate([np.asarray(p) for p in parts], axis=1)
    scale = min(side / strip.shape[1], side / strip.shape[0])
    size = (max(1, round(strip.shape[1] * scale)), max(1, round(strip.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(strip).resize(size, Image.BICUBIC))
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    canvas[top: top + size[1], left: left + size[0]] = fitted
    pixels = (canvas.astype(np.float64) / 255.0 - np.array(RAD_DINO_MEAN)) / np.array(RAD_DINO_STD)
    return pixels.transpose(2, 0, 1)


@pytest.mark.parametrize("connector,prefix", [("sma", N_MEM), ("llava", (IMAGE_SIZE // PATCH) ** 2)])
def test_one_image_per_study_and_one_images_prefix(stitched, radiographs, connector, prefix):
    model, processor = stitched[connector]
    assert model.config.multiview == processor.multiview == "stitch"
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    assert tuple(inputs["pixel_values"].shape) == (2, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert inputs["view_mask"].tolist() == [[True], [True]]
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert counts == [prefix, prefix]  # the two-view study costs what a one-view study costs
    plain = copy.copy(processor)
    plain.multiview = "concat"  # the per-view path writes 2 blocks for the two-view study under llava
    per_view = (plain(images=[radiographs], suffix=REPORTS[:1])["input_ids"] == model.config.image_token_id).sum()
    assert int(per_view) == (2 * prefix if connector == "llava" else prefix)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)


def test_stitched_pixels_equal_an_independent_pil_computation(stitched, radiographs):
    _, processor = stitched["sma"]
    small = [_noise(40, 50, 0), _noise(90, 30, 1), _noise(33, 47, 2)]  # odd sizes: rounding, upsampling never
    big = [_noise(300, 200, 3), _noise(120, 260, 4)]  # taller than the input: the common height is capped at 64
    real = [Image.open(p).convert("RGB") for p in radiographs]
    for views in (small[:2], small, big, real):
        processor.max_views = len(views)
        try:
            got = processor(images=[views])["pixel_values"][0, 0].double().numpy()
        finally:
            processor.max_views = 2
        np.testing.assert_allclose(got, _reference_stitch(views, IMAGE_SIZE), atol=1e-5)
    # the padding is black (the radiograph background): the 2:1 strip of the two square radiographs leaves 16 rows
    black = (0.0 - np.array(RAD_DINO_MEAN)) / np.array(RAD_DINO_STD)
    top_rows = processor(images=[real])["pixel_values"][0, 0, :, :16].double().numpy()
    np.testing.assert_allclose(top_rows, np.broadcast_to(black[:, None, None], top_rows.shape), atol=1e-6)


def test_a_one_view_study_stitched_equals_the_plain_path(stitched, radiographs):
    _, processor = stitched["llava"]
    plain = copy.copy(processor)
    plain.multiview = "concat"
    for image in (radiographs[0], _noise(50, 80, 5)):  # square and non-square (the plain path centre-crops it)
        a, b = processor(images=[[image]], suffix=REPORTS[:1]), plain(images=[[image]], suffix=REPORTS[:1])
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_saved_processor_and_config_keep_the_mode(stitched, tmp_path):
    from configuration_s2d import S2DAlignConfig
    from processing_s2d import S2DAlignProcessor

    model, processor = stitched["sma"]
    processor.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    assert S2DAlignProcessor.from_pretrained(tmp_path).multiview == "stitch"
    assert S2DAlignConfig.from_pretrained(tmp_path).multiview == "stitch"
    assert S2DAlignConfig().multiview == "concat"  # the default stays the paper's per-view encoding


def test_bad_modes_and_mismatched_inputs_are_clear_errors(stitched, radiographs):
    from configuration_s2d import S2DAlignConfig
    from processing_s2d import S2DAlignProcessor

    model, processor = stitched["sma"]
    with pytest.raises(Exception, match="multiview"):  # the strict dataclass's Literal check answers first
        S2DAlignConfig(multiview="tile")
    with pytest.raises(ValueError, match="multiview must be one of"):
        S2DAlignProcessor(processor.image_processor, processor.tokenizer, processor.text_encoder_tokenizer,
                          multiview="tile")
    plain = copy.copy(processor)
    plain.multiview = "concat"
    with pytest.raises(ValueError, match="stitched studies"):  # per-view inputs to a stitching model
        model(**plain(images=[radiographs], suffix=REPORTS[:1]))


def test_the_feature_cache_key_follows_the_mode(stitched):
    from s2d_align.training import features

    model, processor = stitched["sma"]
    plain = copy.copy(processor)
    plain.multiview = "concat"
    stitch_manifest = features.cache_manifest(model.config, "digest", processor, "float16")
    plain_manifest = features.cache_manifest(model.config, "digest", plain, "float16")
    assert stitch_manifest["multiview"] == "stitch" and "multiview" not in plain_manifest  # old keys stay valid
    assert features.cache_key(stitch_manifest) != features.cache_key(plain_manifest)


def test_a_training_step_runs(radiographs):
    model, processor = build_tiny(vocab_size=512, seed=3, connector="sma", multiview="stitch")
    model.set_stage(1)
    model.train()
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    adapter = [p for n, p in model.named_parameters() if p.requires_grad and "connector" in n]
    before = [p.detach().clone() for p in adapter]
    losses = adamw_steps(model, inputs, 3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(not torch.equal(p, b) for p, b in zip(adapter, before))


def test_the_feature_cache_stores_one_stitched_image_per_study(tmp_path):
    """Training from cached features sees what live encoding of the stitched image sees (two-view studies too)."""
    from datasets import load_from_disk
    from test_training_support import TINY, make_dataset

    from s2d_align.training import S2DAlignCollator, prepare_feature_cache

    model, processor = build_tiny(**{**TINY, "connector": "llava"}, multiview="stitch")
    model.save_pretrained(tmp_path / "m0")
    processor.save_pretrained(tmp_path / "m0")
    path = make_dataset(tmp_path / "data", sizes=(("train", 4),))  # alternately one and two views
    rows = load_from_disk(str(path))["train"]
    cache = prepare_feature_cache(tmp_path / "m0", path, {"train": rows}, processor, dtype="float32")
    patches = (TINY["image_size"] // TINY["patch_size"]) ** 2
    assert [tuple(cache.image(r["id"]).shape) for r in rows] == [(1, patches, TINY["vision_width"])] * len(rows)
    batch = list(rows)
    live, cached = S2DAlignCollator(processor)(batch), S2DAlignCollator(processor, features=cache)(batch)
    assert torch.equal(live["input_ids"], cached["input_ids"]) and torch.equal(live["labels"], cached["labels"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**cached).loss, model(**live).loss, atol=1e-5, rtol=1e-5)
