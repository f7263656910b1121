"""Cost model: what each curriculum stage and inference cost, for S2D-Align and its LLaVA-style peer.

    python -m bench.cost --config real                      # the real-size model (Rad-DINO-B/14 518 px, CXR-BERT,
                                                            # Vicuna-7B): `S2DAlignConfig()` defaults
    python -m bench.cost --config out/init [--check] [--out bench/results/cost_real.json]

`--config` is `real`, a model folder / `config.json`, or a YAML/JSON file of `S2DAlignConfig` arguments. The peer is
the same config with `connector: llava` (LLaVA-1.5's 2-layer MLP over every patch: each patch an LLM token), trained
with RRG24's two-stage recipe: s1 = projector alignment with the LLM frozen, s2 = projector + LoRA, image only.
Ours: the paper's s1 (image), s2 (+ reference report), s3 (+ key phrases), LoRA from s2 on.

Per stage and for inference, for both: parameters (total / trainable), LLM tokens per sample, FLOPs per sample by
component (frozen image encoder, text encoder, adapters, LLM forward / backward, LM head), with and without the
frozen-feature cache, KV-cache bytes per report, and the H100 ceilings (989 TFLOP/s dense bf16, 3.35 TB/s HBM).

Conventions (those of PyTorch's `torch.utils.flop_counter`, against which `--check` verifies the counts on the meta
device): a multiply-add is 2 FLOPs; only matrix products count (linear layers, attention products, the patch
convolution); attention is counted in full, S x S, also where it is causal (a causal kernel does about half of that
part); backward = what autograd computes: for a frozen weight only the input gradient (1x the forward), for a
trainable one also the weight gradient (2x), nothing for the no-grad frozen encoders. Training FLOPs are model FLOPs
without activation-checkpointing recomputation (checkpointing adds one LLM forward). Inference FLOPs per report: one
forward over the whole sequence (prefill + decode with a KV cache do the same products, the causal half of the
attention part aside).

Workload assumptions (ours, stated in the output; change them with the flags): one view per study (RRG24 stitches
the views into one image; our default `max_views` 2 would double the image costs of both), a 25-token prompt text
(BOS, the instruction, the answer marker: counted by hand from the template), 100 report tokens with EOS (generation is
benchmarked at 100 forced tokens), a 100-token reference report and 32 tokens of key phrases for the text encoder,
LoRA rank 16 on the 7 linear layers of every LLM block.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM
H100_HBM_BYTES_PER_S = 3.35e12
BF16_BYTES = 2
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMPONENTS = ("image_encoder", "text_encoder", "adapters", "llm_forward", "llm_backward", "lm_head")


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 25
    report_tokens: int = 100
    reference_tokens: int = 100
    keyphrase_tokens: int = 32
    views: int = 1
    lora_rank: int = 16


@dataclass(frozen=True)
class Stage:
    name: str
    modalities: tuple  # context inputs, in prefix order
    lora: bool
    training: bool = True


STAGES = {
    "ours": (Stage("s1", ("image",), False), Stage("s2", ("image", "reference"), True),
             Stage("s3", ("image", "reference", "keyphrases"), True), Stage("inference", ("image",), False, False)),
    # RRG24 (Gla-AI4BioMed): adapter alignment with the LLM frozen, then LoRA; the image is the only context
    "peer": (Stage("s1", ("image",), False), Stage("s2", ("image",), True),
             Stage("inference", ("image",), False, False)),
}


# -- analytic counts ------------------------------------------------------------------------------------------------
@dataclass
class Matmul:
    """One matrix product: `macs` multiply-adds forward; `grads` products of the same size in the backward (0: no
    backward; 1: the input gradient or the weight gradient; 2: both)."""
    component: str
    macs: int
    grads: int = 0


def _encoder_layer(tokens: int, width: int, mlp: int) -> list[int]:
    """Multiply-adds of one ViT / BERT layer (q, k, v, o, the MLP, QK^T and AV) over `tokens` tokens."""
    return [4 * tokens * width * width, 2 * tokens * width * mlp, 2 * tokens * tokens * width]


def image_encoder_ops(config, views: int) -> list[Matmul]:
    v = config.vision_config
    side = v.image_size // v.patch_size
    patches = side * side
    ops = [Matmul("image_encoder", views * patches * 3 * v.patch_size ** 2 * v.hidden_size)]  # patch convolution
    for _ in range(v.num_hidden_layers):
        ops += [Matmul("image_encoder", views * m) for m in _encoder_layer(patches + 1, v.hidden_size,
                                                                          v.intermediate_size)]
    return ops


def text_encoder_ops(config, tokens: int) -> list[Matmul]:
    t = config.text_encoder_config
    return [Matmul("text_encoder", m) for _ in range(t.num_hidden_layers)
            for m in _encoder_layer(tokens, t.hidden_size, t.intermediate_size)]


def adapter_ops(config, modality: str, tokens: int, training: bool) -> list[Matmul]:
    """One modality's adapter over `tokens` input tokens. The image tokens need an input gradient in training (the
    trainable view embedding is added to them); text features from the frozen encoder do not."""
    d_v, d_llm = config.vision_config.hidden_size, config.text_config.hidden_size
    d_in = d_v if modality == "image" else config.text_encoder_config.hidden_size
    both, weight_only = (2, 1) if training else (0, 0)
    input_grad = modality == "image"
    if config.connector == "llava" and modality == "image":
        return [Matmul("adapters", tokens * d_v * d_llm, both), Matmul("adapters", tokens * d_llm * d_llm, both)]
    if config.connector not in ("sma", "sma_unshared", "llava"):
        raise ValueError(f"the cost model covers the connectors sma, sma_unshared and llava, not {config.connector!r}")
    n = config.num_memory_queries
    ops = []
    if d_in != d_v:  # keys / values projected to d_v first
        ops.append(Matmul("adapters", tokens * d_in * d_v, both if input_grad else weight_only))
        input_grad = True
    ops += [Matmul("adapters", n * d_v * d_v, both),  # q from the (trainable) memory bank
            Matmul("adapters", 2 * tokens * d_v * d_v, both if input_grad else weight_only),  # k, v
            Matmul("adapters", n * tokens * d_v, both), Matmul("adapters", n * tokens * d_v, both),  # QK^T, AV
            Matmul("adapters", n * d_v * d_v, both)]  # output projection
    width = d_v
    for _ in range(config.adapter_mlp_depth):
        ops.append(Matmul("adapters", n * width * d_llm, both))
        width = d_llm
    return ops


def llm_ops(config, tokens: int, training: bool, lora_rank: int | None) -> list[Matmul]:
    """The LLM body over `tokens` positions (frozen base weights: input gradients only) and the LM head. Every
    position needs gradients in training: the trainable prefix sits near the start of the sequence."""
    t = config.text_config
    h, i = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * (h // t.num_attention_heads)
    base = 1 if training else 0
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
              "up_proj": (h, i), "down_proj": (i, h)}
    layer = [Matmul("llm", tokens * a * b, base) for a, b in shapes.values()]
    layer += [Matmul("llm", tokens * tokens * h, 2 * base)] * 2  # QK^T and AV, all heads
    if lora_rank:
        layer += [Matmul("llm", tokens * r, 2 * base) for a, b in shapes.values()
                  for r in (a * lora_rank, lora_rank * b)]
    ops = layer * t.num_hidden_layers
    ops.append(Matmul("lm_head", tokens * h * t.vocab_size, base))
    return ops


def prefix_tokens(config, modality: str, views: int) -> int:
    if modality == "image" and config.image_tokens_per_view:
        return config.image_tokens_per_view * views
    return config.num_memory_queries


def context_tokens(modality: str, work: Workload) -> int:
    return {"reference": work.reference_tokens, "keyphrases": work.keyphrase_tokens}[modality]


def llm_tokens(config, stage: Stage, work: Workload) -> int:
    return work.prompt_tokens + sum(prefix_tokens(config, m, work.views) for m in stage.modalities) + \
        work.report_tokens


def analytic_flops(config, stage: Stage, work: Workload) -> dict:
    """FLOPs per sample by component (see the module docstring for the conventions)."""
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    ops = image_encoder_ops(config, work.views)
    for modality in stage.modalities:
        if modality == "image":
            ops += adapter_ops(config, "image", work.views * patches, stage.training)
        else:
            ops += text_encoder_ops(config, context_tokens(modality, work))
            ops += adapter_ops(config, modality, context_tokens(modality, work), stage.training)
    ops += llm_ops(config, llm_tokens(config, stage, work), stage.training, work.lora_rank if stage.lora else None)
    out = dict.fromkeys(COMPONENTS, 0)
    for op in ops:
        forward, backward = 2 * op.macs, 2 * op.macs * op.grads
        if op.component == "llm":
            out["llm_forward"] += forward
            out["llm_backward"] += backward
        else:
            out[op.component] += forward + backward
    return out


# -- the model on the meta device: parameters, and PyTorch's own FLOP counter --------------------------------------
def trainable_groups(config, stage: Stage) -> tuple:
    """Parameter-name fragments that train in `stage` (ours: `modeling_s2d.STAGE_TRAINABLE`; the peer's s2 trains
    its projector and LoRA only). The shared memory bank trains when an `sma` adapter that reads it runs."""
    if not stage.training:
        return ()
    groups = ["view_embedding"] + [f"connector.adapters.{m}" for m in stage.modalities]
    uses_bank = any(m != "image" or config.connector != "llava" for m in stage.modalities)
    if config.connector in ("sma", "llava") and uses_bank:
        groups.append("connector.memory_bank")
    if stage.lora:
        groups.append("lora_")
    return tuple(groups)


def meta_model(config, stage: Stage, work: Workload):
    """The model on the meta device (LoRA injected where the stage has it), `requires_grad` set for the stage.
    Returns `(model, parameters)`: the bare model and the parameters of the (possibly PEFT-wrapped) whole."""
    import torch

    from modeling_s2d import S2DAlignForConditionalGeneration

    with torch.device("meta"):
        model = S2DAlignForConditionalGeneration(config)
        whole = model
        if stage.lora:
            from peft import LoraConfig, get_peft_model

            targets = r".*language_model.*\.(" + "|".join(LORA_TARGETS) + ")"
            whole = get_peft_model(model, LoraConfig(r=work.lora_rank, lora_alpha=2 * work.lora_rank,
                                                     lora_dropout=0.05, target_modules=targets))
    groups = trainable_groups(config, stage)
    params = {id(p): (n, p) for n, p in whole.named_parameters()}.values()
    for name, param in params:
        param.requires_grad_(any(g in name for g in groups) and "original_module" not in name)
    model.train(stage.training)
    return model, [p for _, p in params]


def parameters(params) -> dict:
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def measured_flops(config, stage: Stage, work: Workload, model=None) -> dict:
    """FLOPs per sample by component from `torch.utils.flop_counter.FlopCounterMode`, running the real modules at the
    config's sizes on the meta device (nothing is allocated). The placeholder scatter is data-dependent (it cannot run
    on meta) and does no arithmetic: the LLM gets the adapter outputs concatenated with the text embeddings instead."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if model is None:
        model, _ = meta_model(config, stage, work)
    inner, meta = model.model, torch.device("meta")
    v = config.vision_config
    out = dict.fromkeys(COMPONENTS, 0)

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()
    with torch.no_grad():
        pixels = torch.empty(work.views, 3, v.image_size, v.image_size, device=meta)
        out["image_encoder"] = count(lambda: inner.vision_tower(pixel_values=pixels))
        for modality in stage.modalities[1:]:
            ids = torch.zeros(1, context_tokens(modality, work), dtype=torch.long, device=meta)
            out["text_encoder"] += count(lambda: inner.text_encoder(input_ids=ids))
    patches = (v.image_size // v.patch_size) ** 2
    inputs = {"image_features": torch.empty(1, work.views, patches, v.hidden_size, device=meta)}
    width = config.text_encoder_config.hidden_size
    for modality, prefix in (("reference", "reference"), ("keyphrases", "keyphrase")):
        if modality in stage.modalities:
            inputs[f"{prefix}_features"] = torch.empty(1, context_tokens(modality, work), width, device=meta)
            inputs[f"{prefix}_attention_mask"] = torch.ones(1, context_tokens(modality, work), dtype=torch.long,
                                                            device=meta)
    grad = torch.enable_grad() if stage.training else torch.no_grad()
    hidden_width = config.text_config.hidden_size
    with grad:
        # each part runs from a leaf tensor of its input, so its backward is counted alone; together they are the
        # products of the whole graph's backward (the adapters' backward starts from the gradient of their outputs)
        contexts = {}
        out["adapters"] = count(lambda: contexts.update(inner.get_context_embeddings(**inputs)))
        prefix = torch.cat(list(contexts.values()), dim=1)
        text = torch.empty(1, work.prompt_tokens + work.report_tokens, hidden_width, device=meta)
        embeds = torch.cat([prefix.detach(), text], dim=1).requires_grad_(stage.training)
        holder = {}
        out["llm_forward"] = count(lambda: holder.update(
            hidden=inner.language_model(inputs_embeds=embeds).last_hidden_state))
        hidden = holder["hidden"].detach().requires_grad_(stage.training)
        out["lm_head"] = count(lambda: holder.update(logits=model.lm_head(hidden)))
        if stage.training:
            logits = holder["logits"]
            labels = torch.zeros(logits.shape[1], dtype=torch.long, device=meta)
            loss = torch.nn.functional.cross_entropy(logits[0].float(), labels)
            out["lm_head"] += count(loss.backward)
            out["llm_backward"] = count(lambda: holder["hidden"].backward(torch.empty_like(hidden)))
            out["adapters"] += count(lambda: prefix.backward(torch.empty_like(prefix)))
    return out


# -- the report -------------------------------------------------------------------------------------------------------
def kv_cache_bytes(config, tokens: int) -> int:
    t = config.text_config
    kv = t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    return 2 * t.num_hidden_layers * kv * tokens * BF16_BYTES


def decode_weight_bytes(config) -> int:
    """bf16 bytes of the weights read at every decode step: the LLM's blocks and final norm, and the LM head (the
    embedding table is only gathered at b rows)."""
    t = config.text_config
    h, i = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * (h // t.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return BF16_BYTES * (t.num_hidden_layers * per_layer + h + h * t.vocab_size)


def generation_ceilings(config, stage: Stage, work: Workload, flops: dict, batches=(1, 8, 32)) -> dict:
    """H100 floors: prefill at peak FLOP/s, each decode step at max(weights + KV cache read at 3.35 TB/s, its FLOPs at
    989 TFLOP/s)."""
    prompt = llm_tokens(config, stage, work) - work.report_tokens
    prefill = flops["image_encoder"] + flops["adapters"] + flops["llm_forward"] * prompt / llm_tokens(
        config, stage, work)
    weights = decode_weight_bytes(config)
    step_flops = weights  # 2 FLOPs per bf16 weight (2 bytes) and token
    out = {}
    for b in batches:
        steps = []
        for k in range(work.report_tokens):
            kv = kv_cache_bytes(config, prompt + k)
            steps.append(max((weights + b * kv) / H100_HBM_BYTES_PER_S, b * step_flops / H100_BF16_FLOPS))
        seconds = b * prefill / H100_BF16_FLOPS + sum(steps)
        out[f"b{b}"] = {"reports_per_s_ceiling": b / seconds, "decode_step_ms_floor_first": 1e3 * steps[0]}
    return out


def stage_row(config, stage: Stage, work: Workload, check: bool) -> dict:
    flops = analytic_flops(config, stage, work)
    uncached = sum(flops.values())
    # the feature cache holds the image and reference features; key phrases are drawn afresh per epoch (live)
    cached = uncached - flops["image_encoder"] - flops["text_encoder"]
    if "keyphrases" in stage.modalities:
        cached += _keyphrase_encoder_flops(config, work)
    model, params = meta_model(config, stage, work)
    row = {"stage": stage.name, "context": list(stage.modalities), "lora": stage.lora,
           "parameters": parameters(params), "llm_tokens": llm_tokens(config, stage, work),
           "flops": flops, "flops_total": uncached,
           "flops_total_with_feature_cache": cached if stage.training else None,
           "share": {k: v / uncached for k, v in flops.items()}}
    if stage.training:
        row["h100_samples_per_s_ceiling"] = H100_BF16_FLOPS / uncached
        row["h100_samples_per_s_ceiling_with_feature_cache"] = H100_BF16_FLOPS / cached
    else:
        report = llm_tokens(config, stage, work)
        row["kv_cache_bytes_per_report"] = kv_cache_bytes(config, report)
        row["h100_generation"] = generation_ceilings(config, stage, work, flops)
    if check:
        measured = measured_flops(config, stage, work, model)
        total = sum(measured.values())
        row["flop_counter"] = {
            "flops": measured, "flops_total": total, "relative_difference": (uncached - total) / total,
            "relative_difference_by_component": {k: (flops[k] - measured[k]) / measured[k] if measured[k] else
                                                 float(flops[k] != 0) for k in COMPONENTS}}
    return row


def _keyphrase_encoder_flops(config, work: Workload) -> int:
    """Stage 3 samples its key phrases afresh each epoch: they are encoded live even with the cache."""
    return sum(2 * op.macs for op in text_encoder_ops(config, work.keyphrase_tokens))


def cost(config, work: Workload = Workload(), check: bool = False) -> dict:
    peer = type(config).from_dict({**config.to_dict(), "connector": "llava"})
    result = {"workload": asdict(work), "h100": {"bf16_dense_flops": H100_BF16_FLOPS,
                                                 "hbm_bytes_per_s": H100_HBM_BYTES_PER_S}, "systems": {}}
    for system, cfg in (("ours", config), ("peer", peer)):
        result["systems"][system] = {"connector": cfg.connector,
                                     "stages": [stage_row(cfg, s, work, check) for s in STAGES[system]]}
    ours = {r["stage"]: r for r in result["systems"]["ours"]["stages"]}
    theirs = {r["stage"]: r for r in result["systems"]["peer"]["stages"]}
    result["ratios"] = {
        "stage1_train_flops_peer_over_ours": theirs["s1"]["flops_total"] / ours["s1"]["flops_total"],
        "stage2_train_flops_peer_over_ours": theirs["s2"]["flops_total"] / ours["s2"]["flops_total"],
        "inference_kv_cache_peer_over_ours": theirs["inference"]["kv_cache_bytes_per_report"]
        / ours["inference"]["kv_cache_bytes_per_report"],
    }
    return result


def load_config(spec: str):
    """`real` -> `S2DAlignConfig()`; a folder or config.json -> that config; a YAML / JSON of arguments -> built."""
    import yaml

    from configuration_s2d import S2DAlignConfig

    if spec == "real":
        return S2DAlignConfig()
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--config {spec}: no such file or model folder (or pass 'real')")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not YAML/JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of S2DAlignConfig arguments")
    data.pop("model_type", None)
    return S2DAlignConfig.from_dict(data)


def table(result: dict) -> str:
    lines = ["| system | stage | LLM tokens | params total | trainable | TFLOP/sample | with cache | image enc. | "
             "text enc. | adapters | LLM fwd | LLM bwd | head | H100 samples/s (cache) |", "|" + "---|" * 14]
    for system, body in result["systems"].items():
        for r in body["stages"]:
            f, share = r["flops_total"], r["share"]
            cached = r["flops_total_with_feature_cache"]
            if "h100_samples_per_s_ceiling" in r:
                ceiling = (f"{r['h100_samples_per_s_ceiling']:.1f} "
                           f"({r['h100_samples_per_s_ceiling_with_feature_cache']:.1f})")
            else:
                ceiling = "generation b1/b8/b32: " + " / ".join(
                    f"{g['reports_per_s_ceiling']:.1f}" for g in r["h100_generation"].values()) + " reports/s"
            cells = [f"{system} ({body['connector']})", r["stage"], str(r["llm_tokens"]),
                     f"{r['parameters']['total'] / 1e9:.3f}B", f"{r['parameters']['trainable'] / 1e6:.1f}M",
                     f"{f / 1e12:.2f}", f"{cached / 1e12:.2f}" if cached else "-"]
            cells += [f"{100 * share[k]:.1f}%" for k in COMPONENTS] + [ceiling]
            lines.append("| " + " | ".join(cells) + " |")
    for system, body in result["systems"].items():
        for r in body["stages"]:
            if "kv_cache_bytes_per_report" in r:
                floor = r["h100_generation"]["b1"]["decode_step_ms_floor_first"]
                lines.append(f"\n{system}: KV cache per report {r['kv_cache_bytes_per_report'] / 2**20:.1f} MiB (bf16); "
                             f"batch-1 decode step floor {floor:.2f} ms")
            if "flop_counter" in r:
                lines.append(f"{system} {r['stage']}: analytic vs PyTorch FLOP counter (meta device): "
                             f"{100 * r['flop_counter']['relative_difference']:+.3f}%")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="real")
    parser.add_argument("--out", default=None, help="write the JSON here (e.g. bench/results/cost_real.json)")
    parser.add_argument("--check", action="store_true", help="also count with PyTorch's FLOP counter (meta device)")
    for field, default in asdict(Workload()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    work = Workload(**{f: getattr(args, f) for f in asdict(Workload())})
    import s2d_align  # noqa: F401  (registers the model classes)

    result = cost(load_config(args.config), work, check=args.check)
    result["config"] = args.config
    if args.out:
        from bench.environment import environment

        result["environment"] = environment()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
