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
    original = features._compute_shards

    def counting(encoders, processor, jobs, *args, **kwargs):
        calls.extend([r["id"] for r in job["rows"]] for job in jobs)
        return original(encoders, processor, jobs, *args, **kwargs)

    monkeypatch.setattr(features, "_compute_shards", counting)
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
    processor(suffix=["a report"], references=["a reference"])
    from modeling_s2d import S2DAlignForConditionalGeneration

    resaved = tmp_path / "resaved"
    S2DAlignForConditionalGeneration.from_pretrained(tiny_folder.path).save_pretrained(resaved)
    processor.save_pretrained(resaved)
    reloaded = type(processor).from_pretrained(resaved)
    reloaded(suffix=["x"], references=["y"], key_phrases=[["z"]])
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
    # anatomy masks (here each image stands in as its own mask): the cached batch makes the same ones without
    # decoding the images
    masked = [{**row, "anatomy_mask_paths": list(row["image_paths"])} for row in rows]
    live = S2DAlignCollator(processor, ("image",), anatomy_masks=True)(masked)["anatomy_masks"]
    from_cache = S2DAlignCollator(processor, ("image",), features=cache, anatomy_masks=True)(masked)["anatomy_masks"]
    assert live.shape[:2] == stage1["view_mask"].shape and torch.equal(live, from_cache)


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


# -- size, disk, workers, list / clean -----------------------------------------------------------------------------
def _cached_tensor_bytes(root) -> int:
    total = 0
    for shard in root.rglob("shard-*.safetensors"):
        total += sum(t.numel() * t.element_size() for t in load_file(shard).values())
    return total


def test_size_estimate_equals_the_tensors_written(tiny_folder, data):
    prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor, shard_size=4)
    (root,) = (data.path / "feature_cache").iterdir()
    encoders, _ = features.load_encoders(tiny_folder.path)
    rows = data.splits["train"].to_list()
    estimate = features._jobs_bytes([{"rows": rows}], encoders, tiny_folder.processor, True, "float16")
    assert estimate == _cached_tensor_bytes(root)
    # the formula itself, on Rad-DINO's numbers: 1,369 patches x 768 x 2 bytes = 2.1 MB per image
    assert features.estimate_cache_bytes(1, 1369, 768) == 2_102_784


def test_a_cache_that_does_not_fit_stops_before_writing(tiny_folder, data, monkeypatch):
    monkeypatch.setattr(features.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, free=1000))
    with pytest.raises(RuntimeError) as err:
        prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor)
    message = str(err.value)
    assert "\n" not in message and "--no_feature_cache" in message
    assert "GB free" in message and "needs about" in message
    assert not list((data.path / "feature_cache").rglob("*.safetensors"))


def test_precompute_workers_and_batch_size_give_the_same_features(tiny_folder, data, tmp_path):
    args = (tiny_folder.path, data.path, data.splits, tiny_folder.processor)
    one = prepare_feature_cache(*args, dtype="float32", batch_size=8, cache_root=tmp_path / "a")
    two = prepare_feature_cache(*args, dtype="float32", batch_size=3, num_workers=1, cache_root=tmp_path / "b")
    for row in data.splits["train"]:
        assert torch.equal(one.image(row["id"]), two.image(row["id"]))
        assert torch.equal(one.reference(row["id"]), two.reference(row["id"]))


def test_cache_cli_lists_and_cleans(tiny_folder, data, capsys):
    from s2d_align.cli import main

    prepare_feature_cache(tiny_folder.path, data.path, data.splits, tiny_folder.processor)
    (kept,) = (data.path / "feature_cache").iterdir()
    stale = data.path / "feature_cache" / "0123456789abcdef"
    shutil.copytree(kept, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    (stale / "manifest.json").write_text(json.dumps({**manifest, "encoder_weights_sha256": "other encoders"}))
    assert main(["cache", "list", str(data.path)]) == 0
    listing = capsys.readouterr().out
    assert kept.name in listing and stale.name in listing
    assert main(["cache", "clean", str(data.path), "--keep-model", str(tiny_folder.path)]) == 0
    assert kept.is_dir() and not stale.exists()
    assert main(["cache", "clean", str(data.path)]) == 2  # says what to pass
    assert "--key KEY, --keep-model MODEL_DIR or --all" in capsys.readouterr().err
    assert main(["cache", "clean", str(data.path), "--key", "nope"]) == 2
    assert main(["cache", "clean", str(data.path), "--all"]) == 0
    assert not list((data.path / "feature_cache").iterdir())


# -- eval contexts and modality dropout ----------------------------------------------------------------------------
def _rows(n, prefix):
    return [{"id": f"{prefix}{i}", "image_paths": [], "report": "clear.", "reference": "ref", "key_phrases": ["a"]}
            for i in range(n)]


def test_modality_dropout_is_per_batch_and_the_same_on_every_rank(tiny_folder, monkeypatch):
    from s2d_align.training.collator import EVAL_CONTEXT_COLUMN

    stage3 = ("image", "reference", "keyphrases")
    # two ranks: same seed, other samples; their draws must agree batch by batch
    ranks = [S2DAlignCollator(tiny_folder.processor, stage3, seed=3, modality_dropout=0.5) for _ in range(2)]
    draws = [[rank.batch_modalities(_rows(2, f"r{r}b{b}-")) for b in range(60)] for r, rank in enumerate(ranks)]
    assert draws[0] == draws[1]
    dropped = sum(d == ("image",) for d in draws[0])
    assert 15 <= dropped <= 45 and set(draws[0]) == {("image",), stage3}
    ranks[0].epoch = 1  # a new epoch draws anew
    assert [ranks[0].batch_modalities(_rows(2, "x")) for _ in range(60)] != draws[0]
    # off by default, and never on evaluation rows, whose context is their own
    assert S2DAlignCollator(tiny_folder.processor, stage3).batch_modalities(_rows(2, "y")) == stage3
    always = S2DAlignCollator(tiny_folder.processor, stage3, modality_dropout=1.0)
    assert always.batch_modalities([{**r, EVAL_CONTEXT_COLUMN: "full"} for r in _rows(2, "e")]) == stage3
    never = S2DAlignCollator(tiny_folder.processor, stage3)
    assert never.batch_modalities([{**r, EVAL_CONTEXT_COLUMN: "image_only"} for r in _rows(2, "e")]) == ("image",)
    with pytest.raises(ValueError, match="probability"):
        S2DAlignCollator(tiny_folder.processor, stage3, modality_dropout=1.5)


def test_a_dropped_batch_is_the_image_only_prompt_of_inference(tiny_folder, data):
    rows = list(data.splits["train"].select(range(3)))
    processor = tiny_folder.processor
    dropped = S2DAlignCollator(processor, ("image", "reference", "keyphrases"), modality_dropout=1.0)(rows)
    inference = processor(images=[r["image_paths"] for r in rows], suffix=[r["report"] for r in rows])
    assert "reference_input_ids" not in dropped and "keyphrase_input_ids" not in dropped
    for key in ("input_ids", "attention_mask", "labels", "pixel_values", "view_mask"):
        assert torch.equal(dropped[key], inference[key]), key


def test_eval_views_name_the_losses(data):
    from s2d_align.training.collator import eval_views

    split = data.splits["train"]
    assert list(eval_views(split, ("image",))) == ["image_only"]
    views = eval_views(split, ("image", "reference"))
    assert list(views) == ["full", "image_only"] and views["full"]["s2d_eval_context"][0] == "full"


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
