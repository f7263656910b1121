"""The processor: prompt layout, label masking, padding, and odd or bad images."""

import numpy as np
import pytest
import torch
from PIL import Image

from processing_s2d import load_radiograph, select_views


def test_training_inputs_mask_everything_but_the_report(tiny, radiographs):
    model, processor = tiny
    report = "The heart is normal in size. No pleural effusion."
    batch = processor(images=[radiographs[:1], radiographs], suffix=[report, "Lungs are clear."])
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    target = labels[labels != -100].tolist()
    expected = processor.tokenizer(report, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    assert target == expected
    # the labelled tokens are exactly the tail of the real (unpadded) sequence: right padding for training
    real = ids[mask.bool()].tolist()
    assert real[-len(expected):] == expected and mask[0] == 1
    assert (ids == model.config.image_token_id).sum() == model.config.num_memory_queries
    assert batch["view_mask"].tolist() == [[True, False], [True, True]]


def test_generation_inputs_are_left_padded_prompts_without_labels(tiny, radiographs):
    _, processor = tiny
    batch = processor(images=[radiographs[:1]], references=["Prior: clear lungs."])
    assert "labels" not in batch
    ids = batch["input_ids"][0].tolist()
    marker = processor.tokenizer(processor.answer_marker, add_special_tokens=False)["input_ids"]
    assert ids[-len(marker):] == marker
    assert ids.count(processor.placeholder_token_ids["reference"]) == processor.num_memory_queries


def test_placeholders_come_in_prefix_order(tiny, radiographs):
    _, processor = tiny
    batch = processor(images=[radiographs[:1]], suffix=["Clear."], references=["x"], key_phrases=[["a", "b"]])
    ids = batch["input_ids"][0].tolist()
    first = {m: ids.index(t) for m, t in processor.placeholder_token_ids.items()}
    assert first["image"] < first["reference"] < first["keyphrases"]


def test_key_phrases_are_joined_for_the_text_encoder(tiny, radiographs):
    _, processor = tiny
    batch = processor(images=[radiographs[:1]], suffix=["Clear."], key_phrases=[["small left effusion", "no pneumothorax"]])
    direct = processor.text_encoder_tokenizer("small left effusion; no pneumothorax")["input_ids"]
    assert batch["keyphrase_input_ids"][0].tolist() == direct


@pytest.mark.parametrize("report", ["", "   ", None])
def test_text_with_no_report_is_a_clear_error(tiny, radiographs, report):
    _, processor = tiny
    with pytest.raises(ValueError, match="sample 1 has no report text"):
        processor(images=radiographs, suffix=["Lungs are clear.", report])


def test_view_rule_frontal_first_then_lateral():
    positions = ["LL", "AP", "LATERAL", "PA"]
    assert select_views(positions, positions, 2) == [3, 1]  # PA, AP
    assert select_views(positions, positions) == [3, 1, 2, 0]  # then LATERAL before LL
    assert select_views(["x", "y", "z"], ["", "SWIMMERS", "LATERAL"], 2) == [2, 0]  # unknown / other positions last
    assert select_views(["a", "b", "c"], None, 2) == [0, 1]  # no positions: the given order (frontal first)
    assert select_views(["a", "b"], [], 1) == [0]
    with pytest.raises(ValueError, match="got 1 view positions for 2 images"):
        select_views(["a", "b"], ["PA"], 2)


def test_more_views_than_max_views_are_cut_by_the_view_rule(tiny, radiographs, tmp_path):
    _, processor = tiny
    third = tmp_path / "third.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(third)
    a, b, c = radiographs[0], radiographs[1], str(third)
    # the bug this replaces: "study 0 has 3 images; this model takes 1 to max_views=2"
    batch = processor(images=[[a, b, c]], view_positions=[["LATERAL", "", "PA"]])
    expected = processor(images=[[c, a]])  # PA first, then the lateral; the unknown view is dropped
    assert batch["view_mask"].tolist() == [[True, True]]
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    without_positions = processor(images=[[a, b, c]])  # unknown positions: the first two as given
    torch.testing.assert_close(without_positions["pixel_values"], processor(images=[[a, b]])["pixel_values"])
    with pytest.raises(ValueError, match="got 1 view-position lists for 2 studies"):
        processor(images=[[a], [b]], view_positions=[["PA"]])


def test_truncated_reports_get_no_eos(tiny, radiographs):
    _, processor = tiny
    eos = processor.tokenizer.eos_token_id
    long_report = "The heart is normal in size. There is no pleural effusion or pneumothorax."
    tokens = processor.tokenizer(long_report, add_special_tokens=False)["input_ids"]
    short = processor.tokenizer.decode(tokens[:3])
    assert len(processor.tokenizer(short, add_special_tokens=False)["input_ids"]) == 3
    saved = processor.max_report_tokens
    processor.max_report_tokens = 5
    try:
        batch = processor(images=[radiographs[:1]] * 2, suffix=[long_report, short])
        targets = [row[row != -100].tolist() for row in batch["labels"]]
        assert targets[0] == tokens[:5]  # cut at max_report_tokens, no EOS after the cut
        assert targets[1][-1] == eos and len(targets[1]) == 4  # a report that fits ends with EOS
        stats = processor.report_truncation([long_report, short, "  "])
        assert stats == {"reports": 2, "truncated": 1, "longest_tokens": len(tokens), "max_report_tokens": 5}
        processor.max_report_tokens = len(tokens)  # exactly max_report_tokens tokens: not cut, EOS kept
        assert processor.report_ids(long_report, 0) == tokens + [eos]
    finally:
        processor.max_report_tokens = saved


def test_mismatched_batch_sizes_are_errors(tiny, radiographs):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"got 1 reports \(suffix\) for 2 studies"):
        processor(images=radiographs, suffix=["only one"])
    with pytest.raises(ValueError, match="got 1 reference texts for 2 studies"):
        processor(images=radiographs, references=["only one"])


# ---- images ------------------------------------------------------------------------------------------------------
def test_16_bit_images_are_windowed_to_their_own_range(tmp_path):
    array = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_radiograph(path))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    expected = np.round((array.astype(float) - 1000) / 2000 * 255)
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 0.5
    assert (out[..., 0] == out[..., 2]).all()


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:16, :, 3] = 255  # top half opaque grey, bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = np.asarray(load_radiograph(path))[..., 0]
    assert (out[:16] == 200).all() and (out[16:] == 0).all()


def test_palette_and_grayscale_images_become_gray_rgb(tmp_path, radiographs):
    gray = Image.open(radiographs[0]).convert("L")
    palette = gray.convert("P")
    path = tmp_path / "palette.png"
    palette.save(path)
    out = np.asarray(load_radiograph(path))
    assert out.shape[2] == 3 and (out[..., 0] == out[..., 1]).all()
    assert np.abs(out[..., 0].astype(int) - np.asarray(palette.convert("L")).astype(int)).max() == 0


def test_tiny_images_are_refused_with_their_size(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1)).save(path)
    with pytest.raises(ValueError, match=r"dot.png is 1x1 px; a radiograph must be at least 16x16"):
        load_radiograph(path)


def test_unreadable_and_missing_images_name_the_file(tmp_path, tiny):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_radiograph(path)
    with pytest.raises(FileNotFoundError, match="image not found: .*absent.png"):
        load_radiograph(tmp_path / "absent.png")
    with pytest.raises(ValueError, match="broken.png"):  # the processor surfaces the same error
        tiny[1](images=[str(path)])


def test_huge_images_are_downsampled_before_conversion(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (8200, 4100), 128).save(path)
    out = load_radiograph(path)
    # 8200 px needs an integer factor of 3 to fit in 4096 px; PIL's reduce rounds partial blocks up
    assert out.size == (2734, 1367)


def test_processor_pixel_values_match_the_image_processor(tiny, radiographs):
    _, processor = tiny
    batch = processor(images=[radiographs[:1]])
    direct = processor.image_processor([Image.open(radiographs[0]).convert("RGB")], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][0, 0], direct["pixel_values"][0])
