"""Run one curriculum stage, or a whole curriculum, with TRL's `SFTTrainer`.

`run_stage(model_path, dataset_path, output_dir, stage, **sft_overrides)` trains one stage from the S2D-Align folder
`model_path` and writes a complete model folder to `output_dir` (see `s2d_align.training` for its layout);
`run_curriculum` chains stages, each starting from the previous stage's output.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from transformers.trainer_utils import get_last_checkpoint

from modeling_s2d import S2DAlignForConditionalGeneration
from processing_s2d import S2DAlignProcessor

from .collator import EpochCallback, S2DAlignCollator, eval_views
from .export import checkpoint_dir, export_stage, is_complete
from .features import prepare_feature_cache
from .inputs import check_model_folder, count_truncated, load_splits
from .stages import (SFT_FORCED, apply_section, lora_config, parse_curriculum, resolve_stage, set_trainable,
                     sft_defaults)

logger = logging.getLogger(__name__)


def run_stage(model_path, dataset_path, output_dir, stage, *, resume: bool = False, callbacks=None,
              feature_cache: bool = True, cache_dtype: str = "float16", cache_shard_size: int = 256,
              cache_batch_size: int = 8, cache_workers: int = 0, dtype: str = "auto", lora_r: int = 16,
              lora_alpha: int = 32, lora_dropout: float = 0.05, modality_dropout: float = 0.0,
              train_split: str = "train", eval_split: str = "validation", **sft_overrides) -> str:
    """Train one stage (1, 2, 3, "s1".."s3" or "joint") and return the folder of the trained model.

    `sft_overrides` are `SFTConfig` fields; they win over the stage's defaults. `resume=True` continues from the last
    checkpoint in `checkpoint_dir(output_dir)` (`<output_dir>-checkpoints`, beside the model folder; a fresh start
    when there is none); `resume_from_checkpoint=PATH` names one. `feature_cache` precomputes the frozen encoders'
    outputs next to the dataset (`cache_batch_size` / `cache_workers`: the precompute's batch and dataloader
    workers); `dtype` is the dtype the model is loaded in ("auto": the checkpoint's). `modality_dropout` (ours, not
    the paper's, off by default) drops a training batch's reference / key-phrase context to the image-only prompt.
    With an eval strategy, the stage logs `eval_image_only_loss` (the inference condition) and, when its context is
    more than the image, `eval_full_loss`.
    """
    from trl import SFTConfig

    from .trainer import S2DTrainer  # imports TRL's trainer stack: only when a stage runs

    spec = resolve_stage(stage)
    model_path = check_model_folder(model_path)
    out = Path(output_dir)
    wants_eval = sft_overrides.get("eval_strategy", "no") not in ("no", None)
    data = load_splits(dataset_path, spec, {"train": train_split, **({"eval": eval_split} if wants_eval else {})})
    processor = S2DAlignProcessor.from_pretrained(model_path)
    # before the SFTConfig exists: a live ZeRO-3 config would make the encoders load partitioned
    cache = (prepare_feature_cache(model_path, dataset_path, data, processor, dtype=cache_dtype,
                                   shard_size=cache_shard_size, batch_size=cache_batch_size,
                                   num_workers=cache_workers) if feature_cache else None)
    truncated = count_truncated(data["train"], processor)
    if truncated:
        logger.warning("stage %s: %d of %d training reports are longer than max_report_tokens=%d and are cut",
                       spec.name, truncated, len(data["train"]), processor.max_report_tokens)

    checkpoint = sft_overrides.pop("resume_from_checkpoint", None)
    defaults = sft_defaults(spec)
    if modality_dropout > 0:
        # a dropped batch leaves the context adapters without gradients on every rank of that step; DDP must be
        # told, or it stops at the next step waiting for their gradients
        defaults["ddp_find_unused_parameters"] = True
    args = SFTConfig(**{**defaults, **sft_overrides, **SFT_FORCED, "output_dir": str(checkpoint_dir(out))})
    check_dataloader(spec, args, modality_dropout)
    if resume and checkpoint is None and Path(args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(args.output_dir)
    # created after the SFTConfig, so that under ZeRO-3 the weights load partitioned (zero.Init)
    model = S2DAlignForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
    load_dtype = model.dtype
    section = apply_section(model_path, dataset_path, model, processor)  # before the collator reads the prompt
    if args.deepspeed_plugin is None:  # DeepSpeed keeps float32 master weights itself
        upcast_trainables(model)
    collator = S2DAlignCollator(processor, spec.modalities, seed=args.seed, features=cache,
                                modality_dropout=modality_dropout,
                                anatomy_masks=model.config.anatomical_bias == "masks")
    evals = eval_views(data["eval"], spec.modalities) if "eval" in data else None
    trainer = S2DTrainer(model=model, args=args, data_collator=collator, train_dataset=data["train"],
                         eval_dataset=evals, processing_class=processor,
                         peft_config=lora_config(spec, lora_r, lora_alpha, lora_dropout) if spec.lora else None,
                         callbacks=[EpochCallback(collator), *(callbacks or [])])
    inner = trainer.model.get_base_model() if spec.lora else trainer.model
    trainable = set_trainable(inner, spec)  # after PEFT wrapped the model: LoRA + the stage's adapters only
    logger.info("stage %s: %d trainable parameters, resuming from %s", spec.name, trainable, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    summary = {"stage": spec.name, "input_model": str(model_path), "dataset": str(dataset_path), "section": section,
               "modalities": list(spec.modalities), "lora": spec.lora, "trainable_parameters": trainable,
               "global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "resumed_from": checkpoint, "feature_cache": feature_cache,
               "checkpoints": args.output_dir, "modality_dropout": modality_dropout,
               "truncated_reports": {"count": truncated, "of": len(data["train"]),
                                     "max_report_tokens": processor.max_report_tokens,
                                     "counted_by": "train split, tokenized by the stage's processor"},
               "distributed_type": str(trainer.accelerator.distributed_type),
               "num_processes": trainer.accelerator.num_processes,
               "zero_stage": args.deepspeed_plugin.zero_stage if args.deepspeed_plugin is not None else None}
    folder = export_stage(trainer, spec, model_path, out, processor, load_dtype, summary)
    checkpoints = Path(args.output_dir)
    if trainer.accelerator.is_main_process and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # the Trainer creates its output_dir even when it saves nothing (save_strategy "no")
    del trainer, model, inner
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next stage of a curriculum loads a fresh model
    return str(folder)


def check_dataloader(spec, args, modality_dropout: float = 0.0) -> None:
    persistent = args.dataloader_persistent_workers and args.dataloader_num_workers > 0
    if "keyphrases" in spec.modalities and persistent:
        # persistent workers keep the collator copy of the first epoch, so the key-phrase draws would never change
        raise ValueError("stage-3 key phrases are drawn per epoch in the collator; dataloader_persistent_workers "
                         "would freeze them at epoch 0; leave it off")
    if modality_dropout > 0 and persistent:
        raise ValueError("modality dropout is drawn per epoch and batch in the collator; "
                         "dataloader_persistent_workers would keep the first epoch's copy; leave it off")


def upcast_trainables(model: S2DAlignForConditionalGeneration) -> None:
    """Keep the adapters in float32 when the model loads in half precision: AdamW updates of bf16 weights are lost to
    rounding (LoRA weights are float32 already, PEFT upcasts them). The model casts at the adapter boundaries, and
    the exported folder is saved in the load dtype."""
    if model.dtype in (torch.float16, torch.bfloat16):
        model.model.connector.float()
        model.model.view_embedding.float()


def run_curriculum(model_path, dataset_path, output_dir, curriculum: str = "s1,s2,s3", *, resume: bool = False,
                   **overrides) -> str:
    """Run the stages of `curriculum` ('s1,s2,s3', 's1,s3,s2', 'joint', 'rrg24', ...) in order, each from the previous
    stage's output, into `output_dir/<stage>`; returns the last stage's folder. With `resume=True` finished stages
    are skipped and an interrupted one continues from its last checkpoint."""
    specs = parse_curriculum(curriculum)
    if "resume_from_checkpoint" in overrides:
        raise ValueError("a checkpoint belongs to one stage; use resume=True to continue a curriculum")
    root = Path(output_dir)
    current, done = str(model_path), []
    for spec in specs:
        stage_dir = root / spec.name
        if resume and is_complete(stage_dir):
            logger.info("stage %s already complete in %s: skipped", spec.name, stage_dir)
        else:
            run_stage(current, dataset_path, stage_dir, spec.name, resume=resume, **overrides)
        current = str(stage_dir)
        done.append({"stage": spec.name, "folder": current})
    if PartialState().is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        (root / "curriculum.json").write_text(json.dumps({"curriculum": [s.name for s in specs], "input_model":
                                                          str(model_path), "stages": done, "final": current}, indent=1))
    return current
