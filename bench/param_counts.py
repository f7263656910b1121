"""Parameter counts of the default (real-size) S2D-Align configuration, by module and trainable per stage.

Built on the meta device: nothing is allocated or downloaded. Usage:
    python -m bench.param_counts --out out/bench/param_counts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

import s2d_align  # noqa: F401  (registers the classes)
from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignForConditionalGeneration

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def param_counts(config: S2DAlignConfig) -> dict:
    with torch.device("meta"):
        model = S2DAlignForConditionalGeneration(config)
    inner = model.model
    modules = {
        "vision_tower (E_v, frozen)": inner.vision_tower,
        "text_encoder (E_t, frozen)": inner.text_encoder,
        "connector.memory_bank (Q_mem)": inner.connector.memory_bank,
        "connector.adapters.image (SMA_v)": inner.connector.adapters["image"],
        "connector.adapters.reference (SMA_t)": inner.connector.adapters["reference"],
        "connector.adapters.keyphrases (SMA_p)": inner.connector.adapters["keyphrases"],
        "view_embedding": inner.view_embedding,
        "language_model (LLM body, frozen)": inner.language_model,
        "lm_head (frozen)": model.lm_head,
    }
    by_module = {name: count(m) for name, m in modules.items() if m is not None}
    result = {"connector": config.connector, "num_memory_queries": config.num_memory_queries,
              "by_module": by_module, "total": count(model)}
    result["trainable_stage_1"] = model.set_stage(1)
    with torch.device("meta"):
        peft_model = get_peft_model(model, LoraConfig(**LORA))
    result["lora_parameters"] = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    for stage in (2, 3):
        result[f"trainable_stage_{stage}"] = model.set_stage(stage)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/bench/param_counts.json")
    args = parser.parse_args()
    result = param_counts(S2DAlignConfig())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result["by_module"])
    for name, n in result["by_module"].items():
        print(f"{name:<{width}}  {n:>14,}")
    for key in ("total", "lora_parameters", "trainable_stage_1", "trainable_stage_2", "trainable_stage_3"):
        print(f"{key:<{width}}  {result[key]:>14,}")


if __name__ == "__main__":
    main()
