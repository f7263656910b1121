"""Size of one stage-1 Trainer checkpoint of the real-size model (Rad-DINO-B/14, CXR-BERT, Vicuna-7B in bf16), before
and after `S2DTrainer` (checkpoints of the trainable tensors only), with and without DeepSpeed.

Computed on the meta device (nothing is allocated or downloaded) from the tensors each writer stores:

    before, no DeepSpeed   model.safetensors: every tensor of `state_dict()` (frozen in bf16, trainables in fp32
                           after `upcast_trainables`) + optimizer.pt: AdamW's exp_avg and exp_avg_sq per trainable (fp32)
    before, DeepSpeed      model.safetensors (the gathered 16-bit model, `stage3_gather_16bit_weights_on_model_save`)
                           + DeepSpeed module states (every parameter in bf16, frozen ones included) + its optimizer
                           states (fp32 master copy + two Adam moments per trainable)
    after, no DeepSpeed    trainable.safetensors (trainables in fp32) + optimizer.pt (two fp32 moments per trainable)
    after, DeepSpeed       module states of the trainables only (bf16, `exclude_frozen_parameters=True`) + the same
                           optimizer states

Small files (trainer_state.json, scheduler.pt, rng_state.pth, config, tokenizer) are left out: kilobytes.
    python -m bench.checkpoint_size --out out/bench/checkpoint_size.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import s2d_align  # noqa: F401  (registers the classes)
from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignForConditionalGeneration

GB = 1e9


def stage1_model(config: S2DAlignConfig, dtype=torch.bfloat16) -> S2DAlignForConditionalGeneration:
    with torch.device("meta"):
        model = S2DAlignForConditionalGeneration(config).to(dtype)
    model.set_stage(1)
    model.model.connector.float()  # `upcast_trainables`: the adapters train in fp32 without DeepSpeed
    model.model.view_embedding.float()
    return model


def sizes(config: S2DAlignConfig, dtype=torch.bfloat16) -> dict:
    """The four checkpoint sizes of `config` with its weights stored in `dtype` (see the module docstring)."""
    model = stage1_model(config, dtype)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = {id(p): p for p in model.parameters()}.values()  # tied tensors once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    adam = 2 * 4 * trainable  # exp_avg + exp_avg_sq in fp32
    before_plain = state_bytes + adam
    # DeepSpeed keeps the module in bf16 (its fp32 master copy lives in the optimizer states)
    half = 2  # DeepSpeed runs in bf16
    before_ds = half * total + half * total + (4 * trainable + adam)
    after_plain = 4 * trainable + adam
    after_ds = half * trainable + (4 * trainable + adam)
    return {
        "config": "S2DAlignConfig() defaults: Rad-DINO-B/14 518 px, CXR-BERT, Vicuna-7B; bf16",
        "total_parameters": total, "trainable_parameters_stage_1": trainable,
        "bytes": {"before_no_deepspeed": before_plain, "before_deepspeed": before_ds,
                  "after_no_deepspeed": after_plain, "after_deepspeed": after_ds},
        "GB": {k: round(v / GB, 3) for k, v in {"before_no_deepspeed": before_plain, "before_deepspeed": before_ds,
                                               "after_no_deepspeed": after_plain,
                                               "after_deepspeed": after_ds}.items()},
        "note": "one checkpoint; the stock Trainer kept every one (save_steps=500, no limit), S2DTrainer keeps 2",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/bench/checkpoint_size.json")
    args = parser.parse_args()
    result = sizes(S2DAlignConfig())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
