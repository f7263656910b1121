"""Train S2D-Align's curriculum stages with TRL's `SFTTrainer` (in the style of `trl/scripts/sft.py`).

One stage:

    accelerate launch train_sft.py --config CONFIG.yaml --stage 1
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml train_sft.py --config CONFIG.yaml --stage 2 \
        --deepspeed ds_configs/zero2.json

A whole curriculum in one process (`s1,s2,s3`, or an ablation: `s1`, `joint`, `s1,s2`, `s1,s3`, `s1,s3,s2`):

    accelerate launch train_sft.py --config CONFIG.yaml --curriculum s1,s2,s3

CONFIG.yaml holds any of the arguments below and every `SFTConfig` field; the command line wins over the file:

    model_name_or_path: out/init            # an S2D-Align folder: the stage input
    dataset_path: out/data/mimic_cxr        # a DatasetDict saved with save_to_disk
    output_dir: out/train                   # --stage: the stage's folder; --curriculum: output_dir/<stage>/
    per_device_train_batch_size: 8
    gradient_accumulation_steps: 2

Per-stage defaults (paper): epochs 8 / 5 / 3, learning rate 3e-4 / 1e-4 / 5e-5, AdamW, cosine with warmup (3%: ours);
`s2d_align/training/stages.py` lists every default and whether it is the paper's or ours. A value you set (in the
file or on the command line) wins over them in every stage. Checkpoints go to `<stage folder>-checkpoints/` beside
the stage's folder (the newest two: `save_total_limit: 2`, ours; stage 1 keeps only its trainable tensors and their
optimizer state); `--resume` continues a killed run from the last one (with `--curriculum`, finished stages are
skipped).

Each stage's `output_dir` is a complete model folder that loads with
`AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True)`: LoRA merged into the LLM
(`merge_and_unload`), model and processor saved with `save_pretrained` (which writes the remote-code files), plus
`log_history.json`, `training_curve.png`, `training_args.json`, `s2d_stage.json` and the unmerged `adapter/`; the
Trainer's checkpoints are beside it; see `s2d_align.training` for the layout. Under ZeRO-3 the weights are partitioned, so the
stage is saved through `trainer.save_model()` (which gathers them; a plain `save_pretrained` would write empty LoRA
tensors) and rank 0 then merges the saved adapter into the stage input outside `zero.Init`.

DeepSpeed: pass `--deepspeed ds_configs/zero2.json` (or zero3.json, zero3_offload.json), or launch with
`accelerate_configs/multi_gpu.yaml` / `multi_node.yaml`; every value in the json is "auto" and filled in by the Trainer.
The frozen encoders' features are cached next to the dataset (`<dataset_path>/feature_cache/<key>/`) before training,
each process computing its share of the shards (`--no_feature_cache` encodes live; `s2d cache list|clean DATASET`
shows and deletes caches).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field

import yaml


@dataclass
class S2DAlignArguments:
    """Our arguments beside `SFTConfig`'s. Each help text says whether its default is the paper's or ours."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "S2D-Align model folder (stage input)."})
    dataset_path: str | None = field(default=None, metadata={"help": "DatasetDict saved with save_to_disk."})
    stage: str | None = field(default=None, metadata={"help": "Stage to run: 1, 2, 3, joint, align or lora (RRG24's)."})
    curriculum: str | None = field(default=None, metadata={
        "help": "Stages to run in order, e.g. s1,s2,s3, or a named curriculum: s2d (= s1,s2,s3), rrg24 (= align,lora)."})
    resume: bool = field(default=False, metadata={
        "help": "Continue from the last checkpoint in <output_dir>-checkpoints (beside the stage folder)."})
    feature_cache: bool = field(default=True, metadata={
        "help": "Cache the frozen encoders' outputs next to the dataset (ours; --no_feature_cache encodes live). "
                "Rad-DINO at 518 px: 2.1 MB per image in float16; training stops before writing if the disk is "
                "too small."})
    cache_dtype: str = field(default="float16", metadata={"help": "Storage dtype of the feature cache (ours)."})
    cache_shard_size: int = field(default=256, metadata={"help": "Rows per feature-cache shard (ours)."})
    cache_batch_size: int = field(default=8, metadata={"help": "Batch size of the feature-cache precompute (ours)."})
    cache_workers: int = field(default=0, metadata={
        "help": "DataLoader workers that decode images for the feature-cache precompute (ours; 0 = in process)."})
    dtype: str = field(default="auto", metadata={"help": "dtype the model loads in (auto: the checkpoint's)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (stages 2 and 3). Ours: the paper's is lost."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha. Ours: the paper's is lost."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout. Ours: the paper's is lost."})
    modality_dropout: float = field(default=0.0, metadata={
        "help": "NOT from the paper (ours, off by default): probability that a training batch drops its reference "
                "/ key-phrase context to the image-only prompt of inference (drawn per batch, the same on every "
                "rank)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={
        "help": "Split to evaluate on (with eval_strategy); logs eval_image_only_loss and eval_full_loss."})


def make_parser():
    from trl import SFTConfig, TrlParser

    from s2d_align.training.stages import default_bf16

    parser = TrlParser((S2DAlignArguments, SFTConfig))
    parser.set_defaults(bf16=default_bf16())  # so that parsing the arguments works on a CPU-only machine
    return parser


def explicit_values(argv: list[str]) -> dict:
    """The arguments the user set (config file or command line), typed as the parser types them.

    The stage defaults must only fill what the user left unset, and a parsed `SFTConfig` cannot tell an explicit
    `num_train_epochs: 3` from the default 3, so we look at what was given."""
    argv, config = list(argv), {}
    if "--config" in argv:
        at = argv.index("--config")
        with open(argv[at + 1]) as handle:
            config = yaml.safe_load(handle) or {}
        del argv[at: at + 2]
    config.pop("env", None)
    parser = make_parser()
    parser.set_defaults_with_config(**config)
    typed, _ = parser.parse_known_args(argv)  # argparse converts string defaults too, e.g. YAML's "3e-4"
    probe = make_parser()
    for action in probe._actions:  # with SUPPRESS defaults the namespace holds only what the command line gave
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = probe.parse_known_args(argv)
    return {key: getattr(typed, key) for key in set(config) | set(vars(given)) if hasattr(typed, key)}


def main(argv: list[str] | None = None) -> str:
    from accelerate import PartialState
    from trl import SFTConfig

    from s2d_align.training import run_curriculum, run_stage

    argv = sys.argv[1:] if argv is None else list(argv)
    script_args, training_args = make_parser().parse_args_and_config(argv)  # validates everything
    if (script_args.stage is None) == (script_args.curriculum is None):
        raise ValueError("give exactly one of --stage {1,2,3,joint} or --curriculum (e.g. s1,s2,s3)")
    for name in ("model_name_or_path", "dataset_path", "output_dir"):
        if getattr(script_args, name, None) is None and getattr(training_args, name, None) is None:
            raise ValueError(f"--{name} is required")
    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)} - {"output_dir"}
    overrides = {k: v for k, v in explicit_values(argv).items() if k in sft_fields}
    options = {f.name: getattr(script_args, f.name) for f in dataclasses.fields(S2DAlignArguments)
               if f.name not in ("model_name_or_path", "dataset_path", "stage", "curriculum")}
    inputs = (script_args.model_name_or_path, script_args.dataset_path, training_args.output_dir)
    if script_args.curriculum is not None:
        folder = run_curriculum(*inputs, script_args.curriculum, **options, **overrides)
    else:
        folder = run_stage(*inputs, script_args.stage, **options, **overrides)
    state = PartialState()
    state.print(f"model saved to {folder}")
    state.destroy_process_group()
    return folder


if __name__ == "__main__":
    from s2d_align.training.features import CacheDoesNotFit

    try:
        main()
    except CacheDoesNotFit as err:  # a user decision, not a bug: one line, no traceback
        sys.exit(f"train_sft.py: error: {err}")
