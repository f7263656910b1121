"""Attention maps: the adapter hook, the geometry back onto the radiograph, and the grounding check on the phantom."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2d_align.attention import (encoder_crop_box, mirror_box, opacity_zone_masses, patch_attention,
                                 study_attention_images, upsample_to_image, zone_mass)
from s2d_align.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "demo_image_attention"


def _manual_attention(adapter, features, memory):
    """Multi-head attention weights written out from the adapter's projections (torch's MHA math)."""
    attention = adapter.attention
    width, heads = attention.embed_dim, attention.num_heads
    w_q, w_k, _ = attention.in_proj_weight.split(width)
    b_q, b_k, _ = attention.in_proj_bias.split(width)
    q = (memory @ w_q.T + b_q).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, N, d)
    k = (features @ w_k.T + b_k).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, L, d)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)


def test_hook_weights_equal_the_attention_math_and_leave_outputs_unchanged(tiny, radiographs):
    model, processor = tiny
    inputs = processor(images=[radiographs, radiographs[1]])  # a 2-view study and a 1-view study (padded view)
    adapter = model.model.connector.adapters["image"]
    seen = {}
    handle = adapter.register_forward_pre_hook(lambda module, args: seen.update(features=args[0], valid=args[1],
                                                                                 memory=args[2]))
    with torch.inference_mode():
        plain = model.model.get_context_embeddings(inputs["pixel_values"], inputs["view_mask"])["image"]
        maps = patch_attention(model, inputs["pixel_values"], inputs["view_mask"])
        again = model.model.get_context_embeddings(inputs["pixel_values"], inputs["view_mask"])["image"]
    handle.remove()
    assert torch.equal(plain, again) and adapter.last_attentions is None and not adapter.output_attentions
    with torch.inference_mode():
        features = adapter.input_proj(seen["features"])
        weights = _manual_attention(adapter, features, seen["memory"])
        weights = weights.masked_fill(~seen["valid"][:, None, None, :], 0.0)
        weights = weights / weights.sum(-1, keepdim=True)  # softmax over the present patches only
    patches = weights.shape[-1] // 2
    side = int(math.isqrt(patches))
    assert [len(m) for m in maps] == [2, 1]  # the absent view of study 2 has no map
    for b, study in enumerate(maps):
        for v, view in enumerate(study):
            part = weights[b, :, :, v * patches: (v + 1) * patches].mean((0, 1))
            np.testing.assert_allclose(view["grid"], (part / part.sum()).reshape(side, side).numpy(), atol=1e-5)
            assert view["grid"].shape == (side, side) and abs(view["grid"].sum() - 1) < 1e-5
        assert abs(sum(view["share"] for view in study) - 1) < 1e-5
    per_query = patch_attention(model, inputs["pixel_values"], inputs["view_mask"], reduce="none")[0][0]["grid"]
    heads, queries = weights.shape[1:3]
    assert per_query.shape == (heads, queries, side, side)
    np.testing.assert_allclose(per_query.sum((-2, -1)), 1.0, atol=1e-5)
    part = weights[0, :, :, :patches]
    np.testing.assert_allclose(per_query, (part / part.sum(-1, keepdim=True)).reshape(heads, queries, side, side),
                               atol=1e-5)


def test_map_lands_where_the_encoder_saw_the_patch(tiny):
    """A bright square on a wide image: the processor's resize + centre crop puts it in some patch; the one-hot map
    of that patch, upsampled, must be centred on the square in the original image's pixels (stretching the grid
    over the whole width instead would put it 47 px to the left)."""
    _, processor = tiny
    width, height = 300, 150  # shortest edge -> 64 px: the crop keeps the central 150x150 square (x 75..225)
    image = np.zeros((height, width), np.uint8)
    image[42:54, 97:109] = 255  # inside patch (row 2, column 1) of the 8x8 grid, 18.75 px per patch
    pixels = processor.image_processor([Image.fromarray(image).convert("RGB")], return_tensors="pt")["pixel_values"]
    energy = torch.nn.functional.avg_pool2d(pixels[0, :1], 8)[0]  # mean brightness per 8x8-px patch
    row, col = divmod(int(energy.argmax()), energy.shape[1])
    assert (row, col) == (2, 1)
    grid = np.zeros(energy.shape, np.float32)
    grid[row, col] = 1.0
    heat = upsample_to_image(grid, width, height, processor.image_processor)
    assert encoder_crop_box(width, height, processor.image_processor) == pytest.approx((75, 0, 225, 150))
    assert heat[:, :75].sum() == 0 and heat[:, 225:].sum() == 0  # the encoder never saw the sides
    ys, xs = np.mgrid[:height, :width] + 0.5
    centre = (float((heat * xs).sum()), float((heat * ys).sum()))
    assert centre == pytest.approx((103.0, 48.0), abs=4.0)


def test_zone_helpers():
    heat = np.zeros((10, 20))
    heat[2:4, 3:5] = 0.25
    assert zone_mass(heat, [3, 2, 5, 4]) == pytest.approx(1.0)
    assert zone_mass(heat, mirror_box([3, 2, 5, 4], 20)) == 0.0
    assert mirror_box([3, 2, 5, 4], 20) == [15, 2, 17, 4]
    assert zone_mass(heat, [-5, -5, 4, 3]) == pytest.approx(0.25)  # clipped to the image


def test_maps_need_a_cross_attention_connector(tmp_path, radiographs, capsys):
    from s2d_align.tiny import build_tiny

    model, processor = build_tiny(vocab_size=300, connector="mlp", max_views=1)
    inputs = processor(images=[np.full((64, 64), 100, np.uint8)])
    with pytest.raises(ValueError, match="connector is 'mlp'"):
        patch_attention(model, inputs["pixel_values"], inputs["view_mask"])
    model.save_pretrained(tmp_path / "mlp")
    processor.save_pretrained(tmp_path / "mlp")
    assert main(["generate", "--model", str(tmp_path / "mlp"), "--images", radiographs[0], "--attention-maps",
                 str(tmp_path / "maps"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "connector is 'mlp'" in capsys.readouterr().err and not (tmp_path / "p.jsonl").exists()


def _phantom_opacities(per_zone: int = 2, seed: int = 1234, size: int = 128):
    """A fixed set of phantom radiographs with one focal opacity each, every zone (2 sides x 3 levels) `per_zone`
    times, nothing else drawn; the pixel box of each opacity."""
    from s2d_align.data.phantom.findings import FINDINGS, LEVELS, SIDES
    from s2d_align.data.phantom.render import Anatomy, render_study

    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(per_zone):
        for side in SIDES:
            for level in LEVELS:
                findings = {name: None for name in FINDINGS} | {"opacity": {"side": side, "level": level}}
                pixels, locations = render_study(findings, Anatomy.draw(rng), rng, size)
                images.append(Image.fromarray(pixels))
                boxes.append(next(loc["bbox"] for loc in locations if loc["finding"] == "opacity"))
    return images, boxes


IMAGE_PATH = ("model.vision_tower.", "model.view_embedding.", "model.connector.memory_bank.",
              "model.connector.adapters.image.input_proj.", "model.connector.adapters.image.attention.")


@pytest.fixture(scope="module")
def demo_image_path(tmp_path_factory):
    """A model with the demo model's image path (fixture weights, see its README) and random everything else."""
    import shutil

    from modeling_s2d import S2DAlignForConditionalGeneration
    from s2d_align.tiny import tiny_image_processor

    folder = tmp_path_factory.mktemp("demo_image_path")
    config = json.loads((FIXTURE / "config.json").read_text())
    config["text_encoder_config"] = dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64)  # unused here: keep it small
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(FIXTURE / "image_attention.safetensors", folder / "model.safetensors")
    model, info = S2DAlignForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [k for k in info["missing_keys"] if k.startswith(IMAGE_PATH)]  # every weight that steers attention

    class Processor:  # what study_attention_images needs of a processor: the demo's 64 px preprocessing
        max_views = model.config.max_views
        image_processor = tiny_image_processor(model.config.vision_config.image_size)
    return model.eval(), Processor()


def test_demo_attention_is_on_the_opacity_not_its_mirror(demo_image_path):
    """The issue's check: on phantom studies with a focal opacity the map's mass inside the opacity's zone exceeds
    the mass in the mirror zone on the other side. Measured on the full demo model's test split: 0.195 vs 0.026
    (73/75 studies); a map blind to the image gives about the box's area share in both (~0.04)."""
    model, processor = demo_image_path
    images, boxes = _phantom_opacities()
    figure = opacity_zone_masses(model, processor, images, boxes)
    assert figure["studies"] == 12
    assert figure["mean_inside"] > 3 * figure["mean_mirror"]
    assert figure["inside_larger"] >= 11


def test_random_adapter_does_not_pass_the_opacity_check(demo_image_path):
    """Control: the same encoder with an untrained adapter and memory does not single out the opacity, so the
    check above measures training, not the encoder or the geometry."""
    model, processor = demo_image_path
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    state = {k: v for k, v in model.state_dict().items() if k.startswith("model.vision_tower.")}
    untrained.load_state_dict(state, strict=False)
    figure = opacity_zone_masses(untrained, processor, *_phantom_opacities())
    assert figure["mean_inside"] < 1.5 * figure["mean_mirror"]


def test_generate_writes_one_heat_map_per_study(tiny, radiographs, tmp_path):
    model, processor = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    wide = tmp_path / "wide.png"
    Image.open(radiographs[1]).resize((200, 120)).save(wide)
    out, maps = tmp_path / "preds.jsonl", tmp_path / "maps"
    assert main(["generate", "--model", str(folder), "--images", ",".join([radiographs[0], str(wide)]),
                 str(wide), "--out", str(out), "--attention-maps", str(maps), "--max-new-tokens", "4",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["attention_map"]).name for r in rows] == [f"{Path(radiographs[0]).stem}.png", "wide.png"]
    both = Image.open(rows[0]["attention_map"])
    assert both.size == (512 + round(200 * 512 / 120), 512)  # the views side by side at the first one's height
    single = np.asarray(Image.open(rows[1]["attention_map"]), dtype=np.int16)
    gray = np.asarray(Image.open(wide).convert("RGB"), dtype=np.int16)
    assert single.shape == gray.shape and np.abs(single - gray).max() > 50  # the heat map is drawn on it
    expected = study_attention_images(model, processor, [str(wide)])[0]["views"][0]
    assert np.array_equal(single, np.asarray(expected, dtype=np.int16))
