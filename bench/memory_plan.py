"""Per-GPU memory plan of each curriculum stage for the real-size model (Rad-DINO-B/14 518 px, CXR-BERT, Vicuna-7B,
bf16) under DeepSpeed ZeRO-2 and ZeRO-3 on 1 and 8 GPUs, with and without activation checkpointing, against an
80 GB H100. Parameter counts come from the model built on the meta device (PEFT's LoRA included); activations are
analytic (formula below). Writes JSON and a markdown table:

    python -m bench.memory_plan --out out/bench/memory_plan.json      (and memory_plan.md beside it)

Terms (bytes per GPU; N = GPUs; P = all parameters; T = trainable parameters of the stage):
- weights: bf16, 2P; ZeRO-3 partitions them, 2P/N, plus a gathered working set of two LLM layers (the one running and
  the prefetched one).
- gradients: bf16, 2T/N (ZeRO-2 and -3 reduce-scatter them) plus one reduce bucket (`reduce_bucket_size` "auto" =
  hidden^2 elements, bf16).
- optimizer: AdamW under DeepSpeed keeps an fp32 master copy and two fp32 moments, 12T/N.
- activations, per LLM layer and token, in bytes (bf16 = 2; h = hidden, i = MLP width), what autograd saves for the
  backward (a frozen Linear saves nothing: its input is only needed for its own weight gradient):
    every stage   RMSNorm x2 (fp32 input, 4h each) 8h + attention (SDPA/flash: q, k, v, output) 8h
                  + SwiGLU (gate, SiLU(gate), up) 6i
    LoRA stages   + per adapted Linear its dropout output (2 x in) and mask (1 x in): q, k, v, o 12h,
                  gate, up 6h, down 3i (LoRA's r-wide intermediates are negligible)
  so s1: 16h + 6i, s2/s3: 34h + 9i, times layers x batch x sequence. With activation checkpointing only each layer's
  input is kept (2h per layer and token) plus one layer's full set while it is recomputed.
  The LM head adds batch x sequence x vocabulary x (2 bf16 logits + 4 fp32 upcast for the loss + 4 fp32 gradient).
  The frozen encoders run without gradients (or not at all with the feature cache) and the adapters' activations
  (64 memory queries over 2 x 1,369 patches, width 768) are below 0.1 GB at batch 8: left out.
- sequence: BOS + prompt text (about 25 Vicuna tokens, ours: counted by hand from the template) + 64 placeholders
  per context modality + the longest report the processor keeps (max_report_tokens 256) + EOS; batch 8 per GPU (the
  Trainer's default `per_device_train_batch_size`).
- CUDA context, NCCL buffers and allocator fragmentation are not modelled: keep a few GB of headroom.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import get_peft_model

import s2d_align  # noqa: F401  (registers the classes)
from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignForConditionalGeneration
from s2d_align.training.stages import lora_config, resolve_stage, set_trainable

GB = 1e9
H100 = 80e9
PROMPT_TEXT_TOKENS = 25  # BOS + "USER: ...\nWrite the findings section ... chest X-ray. ASSISTANT:" (estimated)
MAX_REPORT_TOKENS = 256  # the processor's default
BATCH = 8


def parameter_counts(config: S2DAlignConfig) -> dict:
    """Total and trainable parameters per stage, on the meta device."""
    with torch.device("meta"):
        model = S2DAlignForConditionalGeneration(config)
    out = {}
    for name in ("s1", "s2", "s3"):
        spec = resolve_stage(name)
        if spec.lora:
            with torch.device("meta"):
                peft = get_peft_model(S2DAlignForConditionalGeneration(config), lora_config(spec))
            trainable = set_trainable(peft.get_base_model(), spec)
            total = sum(p.numel() for p in {id(p): p for p in peft.parameters()}.values())
        else:
            trainable = set_trainable(model, spec)
            total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        out[name] = {"total": total, "trainable": trainable, "modalities": len(spec.modalities)}
    layer = model.model.language_model.layers[0]
    out["llm_layer_parameters"] = sum(p.numel() for p in layer.parameters())
    return out


def sequence_length(config: S2DAlignConfig, modalities: int) -> int:
    return PROMPT_TEXT_TOKENS + config.num_memory_queries * modalities + MAX_REPORT_TOKENS + 1


def activation_bytes(config: S2DAlignConfig, stage: str, tokens: int, checkpointing: bool) -> dict:
    text = config.text_config
    h, i, layers, vocab = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    per_layer_token = 16 * h + 6 * i if stage == "s1" else 34 * h + 9 * i
    full_layer = per_layer_token * tokens
    body = (2 * h * tokens * layers + full_layer) if checkpointing else full_layer * layers
    head = tokens * vocab * (2 + 4 + 4)
    return {"llm_layers": body, "lm_head": head}


def plan(config: S2DAlignConfig) -> dict:
    counts = parameter_counts(config)
    rows = []
    for stage in ("s1", "s2", "s3"):
        total, trainable = counts[stage]["total"], counts[stage]["trainable"]
        seq = sequence_length(config, counts[stage]["modalities"])
        tokens = BATCH * seq
        for zero in (2, 3):
            for gpus in (1, 8):
                weights = 2 * total if zero == 2 else 2 * total / gpus + 2 * 2 * counts["llm_layer_parameters"]
                bucket = 2 * config.text_config.hidden_size ** 2
                gradients = 2 * trainable / gpus + bucket
                optimizer = 12 * trainable / gpus
                for checkpointing in (False, True):
                    act = activation_bytes(config, stage, tokens, checkpointing)
                    activations = act["llm_layers"] + act["lm_head"]
                    total_bytes = weights + gradients + optimizer + activations
                    rows.append({"stage": stage, "zero": zero, "gpus": gpus, "checkpointing": checkpointing,
                                 "batch": BATCH, "sequence": seq, "weights_GB": weights / GB,
                                 "gradients_GB": gradients / GB, "optimizer_GB": optimizer / GB,
                                 "activations_GB": activations / GB, "total_GB": total_bytes / GB,
                                 "fits_80GB": total_bytes < H100})
    return {"model": "S2DAlignConfig() defaults (Rad-DINO-B/14 518 px, CXR-BERT, Vicuna-7B), bf16",
            "parameters": counts, "batch_per_gpu": BATCH, "rows": rows, "formula": __doc__}


def markdown(result: dict) -> str:
    lines = ["| stage | ZeRO | GPUs | act. ckpt | seq | weights | grads | optimizer | activations | total GB | "
             "fits 80 GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['stage']} | {r['zero']} | {r['gpus']} | {'on' if r['checkpointing'] else 'off'} | "
                     f"{r['sequence']} | {r['weights_GB']:.1f} | {r['gradients_GB']:.2f} | {r['optimizer_GB']:.2f} | "
                     f"{r['activations_GB']:.1f} | {r['total_GB']:.1f} | {'yes' if r['fits_80GB'] else 'NO'} |")
    counts = result["parameters"]
    lines.append("")
    lines.append(f"Batch {result['batch_per_gpu']} per GPU. Parameters: "
                 + ", ".join(f"{s} {counts[s]['total'] / 1e9:.3f}B total, {counts[s]['trainable'] / 1e6:.1f}M "
                             "trainable" for s in ("s1", "s2", "s3")) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/bench/memory_plan.json")
    args = parser.parse_args()
    result = plan(S2DAlignConfig())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
