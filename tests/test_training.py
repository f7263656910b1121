"""The curriculum on a tiny model (CPU): learning, weight hand-over between stages, frozen weights, the output
folder, the feature cache against live encoding, resume, and input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from modeling_s2d import STAGE_TRAINABLE
from test_training_support import (CPU_ARGS, Snapshot, load_state, losses, make_dataset, make_model,
                                   one_thread)  # noqa: F401 (autouse fixture)



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return SimpleNamespace(root=root, dataset=make_dataset(root), model=make_model(root / "m0"))


@pytest.fixture(scope="module")
def curriculum(work):
    """s1 -> s2 -> s3, 16 full-batch steps each, with snapshots of the weights at each stage's start and end.
    Activation checkpointing on, as TRL's default is for real runs."""
    from s2d_align.training import run_curriculum

    snapshot = Snapshot()
    out = work.root / "curriculum"
    final = run_curriculum(work.model, work.dataset, out, "s1,s2,s3", callbacks=[snapshot], max_steps=16,
                           learning_rate=1e-2, **{**CPU_ARGS, "activation_checkpointing": True})
    folders = {name: out / name for name in ("s1", "s2", "s3")}
    cache_keys = sorted(p.name for p in (work.dataset / "feature_cache").iterdir())
    return SimpleNamespace(out=out, final=Path(final), folders=folders, snapshot=snapshot, cache_keys=cache_keys)


def test_curriculum_computes_the_feature_cache_once(curriculum):
    # every stage's folder holds the same frozen encoders and processor, so all stages share one cache key
    assert len(curriculum.cache_keys) == 1


def _in_groups(name: str, stage: int) -> bool:
    return any(group in name for group in STAGE_TRAINABLE[stage])


def test_loss_decreases_within_each_stage(curriculum):
    for name, folder in curriculum.folders.items():
        curve = losses(json.loads((folder / "log_history.json").read_text()))
        assert len(curve) == 16, name
        first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
        assert last < first, f"stage {name}: loss {first:.4f} -> {last:.4f}"
    # with LoRA the LLM itself adapts: a clear drop, not just a drift
    s2 = losses(json.loads((curriculum.folders["s2"] / "log_history.json").read_text()))
    assert s2[-1] < 0.9 * s2[0]


def test_each_stage_starts_from_the_previous_stage_weights(curriculum, work):
    inputs = [work.model, curriculum.folders["s1"], curriculum.folders["s2"]]
    for index, previous in enumerate(inputs):
        reference = load_state(previous)
        begin = curriculum.snapshot.begin[index]
        assert set(begin) == set(reference)
        assert all(torch.equal(begin[k], reference[k]) for k in reference)
        # PEFT's trained copies start from the same weights
        assert all(torch.equal(v, reference[k]) for k, v in curriculum.snapshot.trained_begin[index].items())
        # and the checkpoint file itself (names transformers does not rename on load)
        on_disk = load_file(Path(previous) / "model.safetensors")
        shared = [k for k in on_disk if k in begin]
        assert len(shared) > len(on_disk) // 2
        assert all(torch.equal(begin[k], on_disk[k]) for k in shared)


def test_frozen_weights_stay_bit_identical(curriculum):
    snap = curriculum.snapshot
    for index, stage in enumerate((1, 2, 3)):
        begin, end = snap.begin[index], snap.end[index]
        # stage 1 trains its adapters in place; with PEFT every tensor of `plain_state` is a frozen original
        frozen = [k for k in begin if not (stage == 1 and _in_groups(k, 1))]
        assert any("vision_tower" in k for k in frozen) and any("language_model" in k for k in frozen)
        changed = [k for k in frozen if not torch.equal(begin[k], end[k])]
        assert not changed, f"stage {stage} changed frozen weights {changed[:5]}"
        trained_begin, trained_end = snap.trained_begin[index], snap.trained_end[index]
        for group in STAGE_TRAINABLE[stage]:
            if group == "lora_":
                continue
            moved = [k for k in trained_end if group in k and not torch.equal(trained_begin[k], trained_end[k])]
            assert moved, f"stage {stage} did not train {group}"


def test_stage_outputs_differ_only_where_the_stage_trains(curriculum, work):
    before, s1, s2 = load_state(work.model), load_state(curriculum.folders["s1"]), load_state(curriculum.folders["s2"])
    # stage 1: every tensor of its groups moved, nothing else did (the LLM included)
    assert [k for k in before if torch.equal(before[k], s1[k]) == _in_groups(k, 1)] == []
    encoders = [k for k in s1 if "vision_tower" in k or "text_encoder" in k or "adapters.keyphrases" in k]
    assert all(torch.equal(s1[k], s2[k]) for k in encoders)
    lora_targets = [k for k in s2 if "language_model" in k and "q_proj" in k]
    assert lora_targets and all(not torch.equal(s1[k], s2[k]) for k in lora_targets)  # LoRA merged in
    assert torch.equal(s1["model.language_model.embed_tokens.weight"], s2["model.language_model.embed_tokens.weight"])


def test_output_folder_is_complete_and_loads_as_remote_code(curriculum):
    folder = curriculum.final
    for name in ("config.json", "model.safetensors", "modeling_s2d.py", "configuration_s2d.py", "processing_s2d.py",
                 "processor_config.json", "log_history.json", "training_curve.png", "s2d_stage.json"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((curriculum.out / "curriculum.json").read_text())
    assert summary["final"] == str(folder) and [s["stage"] for s in summary["stages"]] == ["s1", "s2", "s3"]
    stage = json.loads((folder / "s2d_stage.json").read_text())
    assert stage["input_model"] == str(curriculum.folders["s2"]) and stage["complete"]
    image = sorted((folder.parents[1] / "images").glob("test_*.png"))[0]
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        f"folder = {str(folder)!r}\n"
        "model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "assert 'transformers_modules' in type(model).__module__, type(model).__module__\n"
        "assert not any(m == 's2d_align' or m.startswith('s2d_align.') for m in sys.modules)\n"
        f"inputs = processor(images=[{str(image)!r}])\n"
        "out = model.generate(**inputs, max_new_tokens=4, do_sample=False)\n"
        "print('OK', out.shape[1] - inputs['input_ids'].shape[1])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_feature_cache_gives_the_same_loss_as_live_encoding(work):
    from s2d_align.training import run_stage

    runs = {}
    for cached in (False, True):
        folder = run_stage(work.model, work.dataset, work.root / f"cache-{cached}", 3, feature_cache=cached,
                           cache_dtype="float32", max_steps=3, learning_rate=1e-3, **CPU_ARGS)
        runs[cached] = losses(json.loads((Path(folder) / "log_history.json").read_text()))
    assert len(runs[True]) == 3
    assert runs[True] == pytest.approx(runs[False], rel=1e-5, abs=1e-6)
    assert (work.dataset / "feature_cache").is_dir()


# p = 0.33 with seed 0: epoch 0 drops batches 0 and 1 but not 3, the batch the resume starts with, so a resume that
# lost count of the skipped batches (drawing batch 3 as batch 0) would drop it and fail the comparison
@pytest.mark.parametrize("stage, dropout", [(1, 0.0), (3, 0.33)])
def test_resume_after_interrupt_gives_the_same_weights(work, stage, dropout):
    """Stage 1 (no PEFT: checkpoints of the trainable tensors only) and stage 3 (LoRA dropout, per-epoch key-phrase
    draws and per-batch modality-dropout draws all have to replay)."""
    from transformers import TrainerCallback

    from s2d_align.training import run_stage

    class Interrupt(Exception):
        pass

    class StopAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Interrupt(f"killed after step {state.global_step}")

    class StepCounter(TrainerCallback):
        count = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.count += 1

    # batch 2 -> 4 steps per epoch, so the run is interrupted mid-epoch and resumes across an epoch boundary
    args = {**CPU_ARGS, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 3,
            "max_steps": 6, "learning_rate": 1e-3, "modality_dropout": dropout}
    whole = run_stage(work.model, work.dataset, work.root / f"whole{stage}", stage, **args)
    with pytest.raises(Interrupt):
        run_stage(work.model, work.dataset, work.root / f"resumed{stage}", stage,
                  callbacks=[StopAfterFirstCheckpoint()], **args)
    checkpoint = work.root / f"resumed{stage}-checkpoints" / "checkpoint-3"  # beside the model folder
    assert checkpoint.is_dir()
    assert not (work.root / f"resumed{stage}" / "model.safetensors").exists()
    steps = StepCounter()
    resumed = run_stage(work.model, work.dataset, work.root / f"resumed{stage}", stage, resume=True,
                        callbacks=[steps], **args)
    assert steps.count == 3  # continued from step 3, not restarted (a restart with the same seed would also match)
    assert json.loads((Path(resumed) / "s2d_stage.json").read_text())["resumed_from"] == str(checkpoint)
    a, b = load_file(Path(whole) / "model.safetensors"), load_file(Path(resumed) / "model.safetensors")
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    log_a = losses(json.loads((Path(whole) / "log_history.json").read_text()))
    log_b = losses(json.loads((Path(resumed) / "log_history.json").read_text()))
    assert log_a == log_b and len(log_a) == 6
    if dropout:  # the draws did drop some batches: the losses are not those of the stage without dropout
        plain = run_stage(work.model, work.dataset, work.root / f"plain{stage}", stage,
                          **{**args, "modality_dropout": 0.0})
        assert losses(json.loads((Path(plain) / "log_history.json").read_text())) != log_a


def test_stage1_checkpoints_hold_only_trainable_tensors_beside_the_folder_and_push_sends_only_model_files(
        work, monkeypatch):
    from safetensors import safe_open

    from modeling_s2d import S2DAlignForConditionalGeneration
    from s2d_align.hub import push
    from s2d_align.training import run_stage

    out = work.root / "s1-ckpt"
    folder = Path(run_stage(work.model, work.dataset, out, 1, **{**CPU_ARGS, "save_strategy": "steps",
                                                                  "save_steps": 1, "max_steps": 3}))
    checkpoints = work.root / "s1-ckpt-checkpoints"
    # the default save_total_limit (2) keeps the newest two of three
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list(folder.glob("checkpoint*"))
    model = S2DAlignForConditionalGeneration.from_pretrained(work.model)
    expected = {n for n, p in model.named_parameters() if any(g in n for g in STAGE_TRAINABLE[1])}
    last = checkpoints / "checkpoint-3"
    with safe_open(last / "trainable.safetensors", "pt") as handle:
        assert set(handle.keys()) == expected
    assert not (last / "model.safetensors").exists()
    trainable_bytes = sum(model.get_parameter(n).numel() * 4 for n in expected)
    whole_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    on_disk = sum(p.stat().st_size for p in last.iterdir())
    # trainables + their two Adam moments, with room for pickle framing: far below a single copy of the model
    assert on_disk < 3 * trainable_bytes + 200_000 < whole_bytes

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, commit_message, allow_patterns=None):
            from huggingface_hub.utils import filter_repo_objects

            # what huggingface_hub itself would select from the folder with these patterns
            every = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
            calls.append(("upload", sorted(filter_repo_objects(every, allow_patterns=allow_patterns))))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    listed = push(str(folder), "someone/s1", dry_run=True)
    push(str(folder), "someone/s1")
    sent = calls[1][1]
    assert sent == sorted(listed)
    tokenizer_files = sorted(p.relative_to(folder).as_posix() for p in (folder / "text_encoder_tokenizer").iterdir())
    assert set(sent) == {"README.md", "chat_template.jinja", "config.json", "configuration_s2d.py", "generation_config.json",
                         "model.safetensors", "modeling_s2d.py", "processing_s2d.py", "processor_config.json",
                         "tokenizer.json", "tokenizer_config.json", *tokenizer_files}
    # a folder written by an older version, with Trainer checkpoints and an adapter inside, still sends only these
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-1" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    assert sorted(push(str(folder), "someone/s1", dry_run=True)) == sent


def test_checkpoint_size_bench_matches_the_files_written(work, monkeypatch):
    """bench/checkpoint_size.py's formulas (used for the 7B figures) against real stage-1 checkpoints of the tiny
    model, written by the stock SFTTrainer (before) and by S2DTrainer (after)."""
    from trl import SFTTrainer

    import s2d_align.training.trainer as trainer_module
    from bench.checkpoint_size import sizes
    from configuration_s2d import S2DAlignConfig
    from s2d_align.training import run_stage

    expected = sizes(S2DAlignConfig.from_pretrained(work.model), dtype=torch.float32)["bytes"]
    args = {**CPU_ARGS, "save_strategy": "steps", "save_steps": 1, "max_steps": 1}
    run_stage(work.model, work.dataset, work.root / "size-after", 1, **args)
    monkeypatch.setattr(trainer_module, "S2DTrainer", SFTTrainer)
    run_stage(work.model, work.dataset, work.root / "size-before", 1, **args)

    def written(name, files):
        return sum((work.root / f"{name}-checkpoints" / "checkpoint-1" / f).stat().st_size for f in files)

    before = written("size-before", ("model.safetensors", "optimizer.pt"))
    after = written("size-after", ("trainable.safetensors", "optimizer.pt"))
    # safetensors headers and pickle framing: tens of kilobytes at most
    assert expected["before_no_deepspeed"] <= before <= expected["before_no_deepspeed"] + 100_000
    assert expected["after_no_deepspeed"] <= after <= expected["after_no_deepspeed"] + 100_000


def test_stage_logs_the_image_only_and_the_full_context_eval_loss(work):
    """Both eval losses equal the trained model's own loss on processor inputs built independently of the collator:
    image only (as `s2d generate` prompts), and with the stage's reference."""
    from datasets import load_from_disk

    from modeling_s2d import S2DAlignForConditionalGeneration
    from processing_s2d import S2DAlignProcessor
    from s2d_align.training import run_stage

    folder = Path(run_stage(work.model, work.dataset, work.root / "eval2", 2, cache_dtype="float32", max_steps=2,
                            learning_rate=1e-2, lora_dropout=0.0, eval_strategy="steps", eval_steps=2,
                            per_device_eval_batch_size=4, **CPU_ARGS))
    logged = {k: v for e in json.loads((folder / "log_history.json").read_text()) for k, v in e.items()
              if k in ("eval_full_loss", "eval_image_only_loss")}
    rows = load_from_disk(str(work.dataset))["validation"]  # 4 rows: one eval batch
    model = S2DAlignForConditionalGeneration.from_pretrained(folder).eval()
    processor = S2DAlignProcessor.from_pretrained(folder)
    images, reports = [list(r["image_paths"]) for r in rows], list(rows["report"])
    with torch.no_grad():
        image_only = model(**processor(images=images, suffix=reports)).loss.item()
        full = model(**processor(images=images, suffix=reports, references=list(rows["reference"]))).loss.item()
    assert logged["eval_image_only_loss"] == pytest.approx(image_only, rel=1e-4)
    assert logged["eval_full_loss"] == pytest.approx(full, rel=1e-4)
    assert abs(full - image_only) > 1e-3  # two conditions, two numbers
    assert (folder / "training_curve.png").stat().st_size > 0


def test_joint_curriculum_trains_every_signal_from_the_start(work):
    from s2d_align.training import run_curriculum

    snapshot = Snapshot()
    final = run_curriculum(work.model, work.dataset, work.root / "joint", "joint", callbacks=[snapshot], max_steps=2,
                           learning_rate=1e-3, **CPU_ARGS)
    assert Path(final).name == "joint"
    stage = json.loads((Path(final) / "s2d_stage.json").read_text())
    assert stage["modalities"] == ["image", "reference", "keyphrases"] and stage["lora"]
    begin, end = snapshot.trained_begin[0], snapshot.trained_end[0]
    assert any("adapters.keyphrases" in k and not torch.equal(begin[k], end[k]) for k in end)


def test_rrg24_curriculum_aligns_the_adapter_then_adds_lora_on_images_alone(work):
    """RRG24's recipe by name: `align` trains the image adapter with the LLM frozen, `lora` adds LoRA; neither reads a
    reference or key phrases (the dataset has neither column) nor touches their adapters. RRG24 trained one model per
    section: the dataset's recorded section (impression here) reaches both stages' config and prompt."""
    from s2d_align.training import parse_curriculum, run_curriculum, run_stage

    assert [s.name for s in parse_curriculum("rrg24")] == ["align", "lora"]
    assert [s.name for s in parse_curriculum("s2d")] == ["s1", "s2", "s3"]
    dataset = make_dataset(work.root / "rrg24-data", drop=("reference", "key_phrases"))
    (dataset / "prepare_summary.json").write_text(json.dumps({"options": {"dataset": "mimic_cxr",
                                                                          "section": "impression"}}))
    snapshot = Snapshot()
    final = run_curriculum(work.model, dataset, work.root / "rrg24", "rrg24", callbacks=[snapshot], max_steps=2,
                           learning_rate=1e-2, **CPU_ARGS)
    assert Path(final).name == "lora"
    align = json.loads((work.root / "rrg24" / "align" / "s2d_stage.json").read_text())
    lora = json.loads((Path(final) / "s2d_stage.json").read_text())
    assert align["modalities"] == lora["modalities"] == ["image"]
    assert (align["lora"], lora["lora"]) == (False, True)
    (a_begin, a_end), (l_begin, l_end) = [(snapshot.begin[i], snapshot.end[i]) for i in (0, 1)]

    def moved(begin, end, part):
        return any(part in k and not torch.equal(begin[k], end[k]) for k in end)

    # align: the LLM's weights are bit-identical, the image adapter moved
    assert not moved(a_begin, a_end, "language_model") and moved(snapshot.trained_begin[0],
                                                                  snapshot.trained_end[0], "adapters.image")
    # lora: the merged LLM differs from the aligned one; the reference / key-phrase adapters never train
    merged, aligned = load_state(final), load_state(work.root / "rrg24" / "align")
    assert any("language_model" in k and not torch.equal(merged[k], aligned[k]) for k in merged)
    start = load_state(work.model)
    for part in ("adapters.reference", "adapters.keyphrases"):
        assert all(torch.equal(merged[k], start[k]) for k in merged if part in k)
    # the section: config (both the plain and the LoRA-merged export), prompt, stage record
    for folder in (work.root / "rrg24" / "align", Path(final)):
        assert json.loads((folder / "config.json").read_text())["section"] == "impression"
        assert "Write the impression section" in json.loads((folder / "processor_config.json").read_text())["prompt"]
        assert json.loads((folder / "s2d_stage.json").read_text())["section"] == "impression"
    assert json.loads((work.model / "config.json").read_text()).get("section", "findings") == "findings"
    with pytest.raises(ValueError, match="trained to write the impression section but dataset .* holds the findings"):
        run_stage(final, work.dataset, work.root / "rrg24-wrong", 1, max_steps=1, **CPU_ARGS)


# -- bad input -----------------------------------------------------------------------------------------------------
def test_missing_dataset_path(work, tmp_path):
    from s2d_align.training import run_stage

    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"dataset path {missing} does not exist"):
        run_stage(work.model, missing, tmp_path / "out", 1, **CPU_ARGS)


def test_dataset_without_train_split(work, tmp_path):
    from s2d_align.training import run_stage

    dataset = make_dataset(tmp_path, sizes=(("validation", 2),))
    with pytest.raises(ValueError, match=r"has no 'train' split \(it has \['validation'\]\)"):
        run_stage(work.model, dataset, tmp_path / "out", 1, **CPU_ARGS)


def test_dataset_without_required_column(work, tmp_path):
    from s2d_align.training import run_stage

    dataset = make_dataset(tmp_path, sizes=(("train", 2),), drop=("report",))
    with pytest.raises(ValueError, match=r"split 'train' lacks the column\(s\) \['report'\] that stage s1 needs"):
        run_stage(work.model, dataset, tmp_path / "out", 1, **CPU_ARGS)


def test_stage2_needs_a_reference_column(work, tmp_path):
    from s2d_align.training import run_stage

    dataset = make_dataset(tmp_path, sizes=(("train", 2),), drop=("reference",))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['reference'\] that stage s2 needs"):
        run_stage(work.model, dataset, tmp_path / "out", 2, **CPU_ARGS)


def test_model_folder_that_is_not_s2d_align(work, tmp_path):
    from s2d_align.training import run_stage

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=f"{folder} is not an S2D-Align model folder: .*model_type 'llama'"):
        run_stage(folder, work.dataset, tmp_path / "out", 1, **CPU_ARGS)
    with pytest.raises(FileNotFoundError, match="model folder .* does not exist"):
        run_stage(tmp_path / "absent", work.dataset, tmp_path / "out", 1, **CPU_ARGS)
    with pytest.raises(ValueError, match="no config.json"):
        run_stage(tmp_path, work.dataset, tmp_path / "out", 1, **CPU_ARGS)


@pytest.mark.parametrize("curriculum, message", [("s1,s4", "unknown stage 's4'"), ("s1,s1", "repeats a stage"),
                                                 ("s1,joint", "curriculum of its own"), ("", "empty curriculum")])
def test_bad_curriculum(curriculum, message):
    from s2d_align.training import parse_curriculum

    with pytest.raises(ValueError, match=message):
        parse_curriculum(curriculum)


def test_paper_curricula_parse():
    from s2d_align.training import parse_curriculum

    for text, names in [("s1", ["s1"]), ("joint", ["joint"]), ("s1,s2", ["s1", "s2"]), ("s1,s3", ["s1", "s3"]),
                        ("s1,s3,s2", ["s1", "s3", "s2"]), ("s1, s2, s3", ["s1", "s2", "s3"]),
                        ("1,2,3", ["s1", "s2", "s3"])]:
        assert [s.name for s in parse_curriculum(text)] == names


def test_resumed_curriculum_skips_finished_stages(curriculum, work):
    from s2d_align.training import run_curriculum

    snapshot = Snapshot()
    final = run_curriculum(work.model, work.dataset, curriculum.out, "s1,s2,s3", resume=True, callbacks=[snapshot],
                           max_steps=16, learning_rate=1e-2, **CPU_ARGS)
    assert Path(final) == curriculum.final and snapshot.begin == []  # nothing trained again
