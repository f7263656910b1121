"""Feature cache (values, reuse, key, invalidation), the collator's key-phrase draws and epoch, the script's
argument handling."""

from __future__ import annotations

import json
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import concatenate_datasets, load_from_disk
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import TrainerState

from test_training_support import TINY, make_dataset, one_thread  # noqa: F401

import s2d_align.training.features as features
from s2d_align.training import EpochCallback, S2DAlignCollator, prepare_feature_cache, sample_key_phrases


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from s2d_align.tiny import build_tiny

    root = tmp_path_factory.mktemp("features")
    model, processor = build_tiny(**TINY)
    model.save_pretrained(root / "m0")
    processor.save_pretrained(root / "m0")
    model.eval()
    return SimpleNamespace(root=root, path=root / "m0", model=model, processor=processor)


@pytest.fixture
def data(tmp_path):
    path = make_dataset(tmp_path, sizes=(("train", 6), ("validation", 2)))
    return SimpleNamespace(path=path, splits={"train": load_from_disk(str(path))["train"]})


def _count_shard_computations(monkeypatch) -> list:
    calls = []
    original = features._compute_shard

    def counting(encoders, processor, rows, *args, **kwargs):
        calls.append([r["id"] for r in rows])
        return original(encoders, processor, rows, *args, **kwargs)

    monkeypatch.setattr(features, "_compute_shard", counting)
    return calls


def test_cached_features_equal_the_model_encoders(tiny_folder, data):
    cache = prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor, dtype="float32",
                                  shard_size=4)
    processor, inner = tiny_folder.processor, tiny_folder.model.model
    for row in data.splits["train"]:
        batch = processor(images=[row["image_paths"]], references=[row["reference"]])
        with torch.no_grad():
            image = inner.encode_images(batch["pixel_values"], batch["view_mask"])[0]
            text = inner.encode_text(batch["reference_input_ids"], batch["reference_attention_mask"])[0]
        assert cache.image(row["id"]).shape == image.shape  # (views, patches, width): absent views not stored
        torch.testing.assert_close(cache.image(row["id"]), image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.reference(row["id"]), text, rtol=1e-5, atol=1e-5)
    files = sorted(p.name for p in next((data.path / "feature_cache").iterdir()).glob("train/*"))
    assert files == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_half_precision_cache_is_close(tiny_folder, data):
    full = prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor, dtype="float32")
    half = prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor, dtype="float16")
    sample = data.splits["train"][0]["id"]
    assert half.image(sample).dtype == torch.float16
    torch.testing.assert_close(half.image(sample).float(), full.image(sample), rtol=2e-3, atol=2e-3)
    assert len(list((data.path / "feature_cache").iterdir())) == 2  # the dtype is part of the key


def test_cache_is_reused_and_stale_shards_recomputed(tiny_folder, data, monkeypatch):
    calls = _count_shard_computations(monkeypatch)
    args = (tiny_folder.path, data.path, data.splits, tiny_folder.processor)
    prepare_feature_cache(*args, shard_size=4)
    assert len(calls) == 2
    prepare_feature_cache(*args, shard_size=4)
    assert len(calls) == 2  # nothing recomputed
    row = data.splits["train"][5]  # in the second shard
    Image.fromarray(np.full((48, 48), 200, dtype=np.uint8)).save(row["image_paths"][0])  # the image changed
    cache = prepare_feature_cache(*args, shard_size=4)
    assert len(calls) == 3 and row["id"] in calls[-1] and data.splits["train"][0]["id"] not in calls[-1]
    fresh = tiny_folder.processor(images=[row["image_paths"]])
    with torch.no_grad():
        expected = tiny_folder.model.model.encode_images(fresh["pixel_values"], fresh["view_mask"])[0]
    torch.testing.assert_close(cache.image(row["id"]).float(), expected, rtol=2e-3, atol=2e-3)


def test_cache_key_follows_encoder_weights_and_preprocessing(tiny_folder, data, tmp_path):
    config = features.S2DAlignConfig.from_pretrained(tiny_folder.path)
    digest = features.load_encoders(tiny_folder.path)[1]
    processor = tiny_folder.processor
    key = features.cache_key(features.cache_manifest(config, digest, processor, "float16"))
    assert key == features.cache_key(features.cache_manifest(config, digest, processor, "float16"))

    # a trained stage's folder (reloaded, re-saved, its processor used in between) keeps the key
    processor(text=["a report"], references=["a reference"])
    from modeling_s2d import S2DAlignForConditionalGeneration

    resaved = tmp_path / "resaved"
    S2DAlignForConditionalGeneration.from_pretrained(tiny_folder.path).save_pretrained(resaved)
    processor.save_pretrained(resaved)
    reloaded = type(processor).from_pretrained(resaved)
    reloaded(text=["x"], references=["y"], key_phrases=[["z"]])
    same = features.cache_manifest(features.S2DAlignConfig.from_pretrained(resaved),
                                   features.load_encoders(resaved)[1], reloaded, "float16")
    assert features.cache_key(same) == key

    # another encoder checkpoint: one vision weight differs
    other = tmp_path / "other"
    shutil.copytree(tiny_folder.path, other)
    state = load_file(other / "model.safetensors")
    name = next(k for k in state if k.startswith("model.vision_tower.") and k.endswith("weight"))
    state[name] = state[name] + 1e-3
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    other_digest = features.load_encoders(other)[1]
    assert other_digest != digest
    assert features.cache_key(features.cache_manifest(config, other_digest, processor, "float16")) != key

    # other image preprocessing / text tokenizer settings / storage dtype
    changed = type(processor).from_pretrained(tiny_folder.path)
    changed.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert features.cache_key(features.cache_manifest(config, digest, changed, "float16")) != key
    changed = type(processor).from_pretrained(tiny_folder.path)
    changed.max_context_tokens = 16
    assert features.cache_key(features.cache_manifest(config, digest, changed, "float16")) != key
    assert features.cache_key(features.cache_manifest(config, digest, processor, "float32")) != key

    # and the computed cache lands under another key folder
    prepare_feature_cache(tiny_folder.path, data.path, data.splits, processor)
    prepare_feature_cache(other, data.path, data.splits, processor)
    keys = sorted(p.name for p in (data.path / "feature_cache").iterdir())
    assert len(keys) == 2 and key in keys
    manifest = json.loads((data.path / "feature_cache" / key / "manifest.json").read_text())
    assert manifest["encoder_weights_sha256"] == digest


def test_duplicate_ids_are_refused(tiny_folder, data):
    doubled = {"train": concatenate_datasets([data.splits["train"], data.splits["train"]])}
    with pytest.raises(ValueError, match="duplicate sample ids"):
        prepare_feature_cache(tiny_folder.path, data.path, doubled, tiny_folder.processor)


# -- key phrases and the collator ----------------------------------------------------------------------------------
def test_key_phrase_draws_are_deterministic_non_empty_subsets():
    phrases = ["a", "b", "c", "d", "e"]
    draws = {epoch: sample_key_phrases(phrases, 0, epoch, "s1") for epoch in range(20)}
    assert draws[3] == sample_key_phrases(phrases, 0, 3, "s1")
    for draw in draws.values():
        assert draw and all(p in phrases for p in draw)
        assert draw == sorted(draw, key=phrases.index)  # original order kept
    assert len({tuple(d) for d in draws.values()}) > 5  # a new draw each epoch
    assert any(sample_key_phrases(phrases, 0, 0, f"s{i}") != draws[0] for i in range(2, 12))  # and per sample
    assert sample_key_phrases([], 0, 0, "s1") == [] and sample_key_phrases(None, 0, 0, "s1") == []
    # independent of the global RNG state
    random.seed(123)
    assert sample_key_phrases(phrases, 0, 3, "s1") == draws[3]


def test_epoch_callback_sets_the_collator_epoch(tiny_folder):
    collator = S2DAlignCollator(tiny_folder.processor, ("image", "reference", "keyphrases"), seed=7)
    callback = EpochCallback(collator)
    for epoch, expected in ((0.0, 0), (1.0, 1), (1.5, 1), (2.999, 2), (None, 0)):
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
        assert collator.epoch == expected
    row = {"id": "x", "key_phrases": ["p1", "p2", "p3"]}
    collator.epoch = 4
    assert collator.key_phrases([row]) == [sample_key_phrases(row["key_phrases"], 7, 4, "x")]


def test_collator_stage_inputs(tiny_folder, data):
    rows = list(data.splits["train"].select(range(3)))
    processor = tiny_folder.processor
    stage1 = S2DAlignCollator(processor, ("image",))(rows)
    assert "reference_input_ids" not in stage1 and "keyphrase_input_ids" not in stage1
    stage3 = S2DAlignCollator(processor, ("image", "reference", "keyphrases"))(rows)
    ids = processor.placeholder_token_ids
    for modality in ("image", "reference", "keyphrases"):
        assert int((stage3["input_ids"] == ids[modality]).sum()) == 3 * processor.num_memory_queries
    assert stage3["reference_input_ids"].shape[0] == 3  # the empty reference of row 0 is encoded too
    cache = prepare_feature_cache(tiny_folder.path, data.path, data.splits, processor, dtype="float32")
    cached = S2DAlignCollator(processor, ("image", "reference", "keyphrases"), features=cache)(rows)
    for key in ("input_ids", "attention_mask", "labels", "view_mask", "reference_attention_mask",
                "keyphrase_input_ids", "keyphrase_attention_mask"):
        assert torch.equal(cached[key].long(), stage3[key].long()), key
    assert "pixel_values" not in cached and cached["image_features"].shape[:2] == stage3["view_mask"].shape


def test_collator_requires_the_image():
    with pytest.raises(ValueError, match="reads the image first"):
        S2DAlignCollator(processor=None, modalities=("reference",))


# -- train_sft.py --------------------------------------------------------------------------------------------------
def test_script_keeps_only_explicit_values(tmp_path):
    import train_sft

    config = tmp_path / "config.yaml"
    config.write_text("model_name_or_path: m\ndataset_path: d\noutput_dir: o\nlearning_rate: 3e-4\n"
                      "num_train_epochs: 2\nenv:\n  S2D_TEST_VAR: '1'\n")
    values = train_sft.explicit_values(["--config", str(config), "--num_train_epochs", "4", "--stage", "2",
                                        "--bf16", "false"])
    assert values["learning_rate"] == pytest.approx(3e-4) and isinstance(values["learning_rate"], float)
    assert values["num_train_epochs"] == 4  # the command line wins over the file
    assert values["bf16"] is False and values["stage"] == "2"
    assert "warmup_steps" not in values and "lr_scheduler_type" not in values and "env" not in values


def test_script_needs_a_stage_or_a_curriculum(tmp_path):
    import train_sft

    with pytest.raises(ValueError, match="exactly one of --stage"):
        train_sft.main(["--model_name_or_path", "m", "--dataset_path", "d", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--dataset_path is required"):
        train_sft.main(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--stage", "1"])


# -- studies with more views than the model takes -----------------------------------------------------------------
def _multiview_dataset(root):
    """Studies of 3 and 4 views (positions shuffled), more than the tiny model's max_views=2."""
    from datasets import Dataset, DatasetDict

    (root / "mv").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, positions in enumerate((["LATERAL", "AP", "PA"], ["LL", "", "AP", "LATERAL"], ["PA"])):
        paths = []
        for j, _ in enumerate(positions):
            path = root / "mv" / f"{i}_{j}.png"
            Image.fromarray(np.full((40, 40), 30 * (i + 1) + 50 * j, np.uint8)).save(path)
            paths.append(str(path))
        rows.append(dict(id=f"mv-{i}", image_paths=paths, view_positions=positions, report="the lungs are clear.",
                         reference="no prior.", key_phrases=["clear lungs"]))
    path = root / "mv_dataset"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(path))
    return path, rows


def test_collator_and_cache_cut_studies_by_the_view_rule(tiny_folder, tmp_path):
    path, rows = _multiview_dataset(tmp_path)
    processor, inner = tiny_folder.processor, tiny_folder.model.model
    assert processor.max_views == 2
    # by hand: PA then AP of study 0; AP then LATERAL of study 1; the single PA of study 2
    chosen = [[rows[0]["image_paths"][2], rows[0]["image_paths"][1]],
              [rows[1]["image_paths"][2], rows[1]["image_paths"][3]], rows[2]["image_paths"]]
    expected = processor(images=chosen)
    live = S2DAlignCollator(processor, ("image",))(rows)
    torch.testing.assert_close(live["pixel_values"], expected["pixel_values"])
    assert live["view_mask"].tolist() == [[True, True], [True, True], [True, False]]
    splits = {"train": load_from_disk(str(path))["train"]}
    cache = prepare_feature_cache(tiny_folder.path, path, splits, processor, dtype="float32")
    with torch.no_grad():
        features = inner.encode_images(expected["pixel_values"], expected["view_mask"])
    for i, row in enumerate(rows):
        stored = cache.image(row["id"])
        assert stored.shape[0] == len(chosen[i])
        torch.testing.assert_close(stored, features[i, : len(chosen[i])], rtol=1e-5, atol=1e-5)
    cached = S2DAlignCollator(processor, ("image",), features=cache)(rows)
    assert torch.equal(cached["view_mask"], live["view_mask"])


def test_collator_counts_targets_cut_without_eos(tiny_folder, data):
    import copy

    processor = copy.deepcopy(tiny_folder.processor)
    rows = list(data.splits["train"])
    lengths = [len(processor.tokenizer(r["report"], add_special_tokens=False)["input_ids"]) for r in rows]
    processor.max_report_tokens = min(lengths)  # the shortest reports fit, the others are cut
    cut = sum(n > processor.max_report_tokens for n in lengths)
    assert 0 < cut < len(rows)
    collator = S2DAlignCollator(processor, ("image", "reference"))
    batch = collator(rows)
    assert (collator.truncated_reports, collator.collated_reports) == (cut, len(rows))
    assert processor.report_truncation([r["report"] for r in rows])["truncated"] == cut
    eos = processor.tokenizer.eos_token_id
    for row, n in zip(batch["labels"], lengths):
        target = row[row != -100].tolist()
        assert (target[-1] == eos) == (n <= processor.max_report_tokens)
        assert len(target) == min(n, processor.max_report_tokens) + (n <= processor.max_report_tokens)
