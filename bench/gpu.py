"""GPU side-by-side benchmark at real shapes (Rad-DINO-B/14 518 px, CXR-BERT, Vicuna-7B; random bf16 weights): ours
(`sma`) against the LLaVA-style peer (`llava`), interleaved A, B, A, B in one run. Run by bench/run_gpu.sh.

    python -m bench.gpu --out $OUT/gpu.json                      # on the H100
    python -m bench.gpu --size tiny --device cpu --out /tmp/g.json  # the same code path, small, to check it here

One copy of the 7B weights serves both systems (the connector module and the config are swapped between the two:
`Systems.use`), so both fit in 80 GB beside their activations. Figures:
- generation, from pixels (the frozen encoder runs in the prefill), 100 new tokens forced, batch 1 / 8 / 32:
  reports/s for both, and at batch 1 ms per decode step against the floor of reading the LLM's bf16 weights and KV
  cache at 3.35 TB/s (`bench.cost`); the default dynamic KV cache, and a static (pre-allocated) one for comparison.
- training steps of stage 1 and stage 2 from cached features (train_sft.py's default), forward + backward + AdamW, no
  activation checkpointing, the trainable adapters in float32 as `run_stage` keeps them (`upcast_trainables`): samples/s,
  peak allocated memory and model-FLOPs utilisation (FLOPs per sample from `bench.cost` over 989 TFLOP/s).
  Batch sizes differ (ours 16, the peer 4 by default: its 1,494-token sequences need about 7 MB of activations per token
  at 7B), so both run near their memory-fitting batch; samples/s is the comparable figure.
- the frozen image encoder alone per image (what the feature cache saves each epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench import cost
from bench.environment import environment

PROMPT_TOKENS, REPORT_TOKENS, REFERENCE_TOKENS = 25, 100, 100
TINY = dict(
    vision_config=dict(model_type="dinov2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, patch_size=14, image_size=518),
    text_encoder_config=dict(model_type="bert", vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=128),
    text_config=dict(model_type="llama", vocab_size=32064, hidden_size=128, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
    adapter_num_heads=4)


class Systems:
    """One model (encoders + LLM) with two connectors; `use(name)` switches the connector and config."""

    def __init__(self, size: str, device: str, dtype: torch.dtype):
        from configuration_s2d import S2DAlignConfig
        from modeling_s2d import S2DAlignConnector, S2DAlignForConditionalGeneration

        extra = TINY if size == "tiny" else {}
        self.configs = {"ours": S2DAlignConfig(max_views=1, **extra),
                        "peer": S2DAlignConfig(max_views=1, connector="llava", **extra)}
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # weights are created in bf16 directly: no float32 copy of 7B
        try:
            with torch.device(device):
                self.model = S2DAlignForConditionalGeneration(self.configs["ours"])
                peer = S2DAlignConnector(self.configs["peer"])
        finally:
            torch.set_default_dtype(default)
        self.model.requires_grad_(False)
        self.model.generation_config.pad_token_id = 0
        self.connectors = {"ours": self.model.model.connector, "peer": peer}
        self.device, self.dtype = device, dtype

    @contextmanager
    def use(self, name: str):
        inner = self.model.model
        inner.connector, inner.config, self.model.config = self.connectors[name], self.configs[name], \
            self.configs[name]
        try:
            yield self.model
        finally:
            inner.connector, inner.config, self.model.config = self.connectors["ours"], self.configs["ours"], \
                self.configs["ours"]

    def input_ids(self, name: str, batch: int, modalities=("image",), report: bool = False) -> torch.Tensor:
        """BOS, prompt words, each modality's placeholders, the answer marker, and (training) the report."""
        config = self.configs[name]
        gen = torch.Generator().manual_seed(0)
        words = lambda n: torch.randint(3, 31999, (n,), generator=gen).tolist()  # noqa: E731
        row = [1] + words(5)
        for modality in modalities:
            count = config.image_tokens_per_view if modality == "image" and config.image_tokens_per_view else \
                config.num_memory_queries
            row += [config.placeholder_token_ids[modality]] * count
        row += words(PROMPT_TOKENS - 6)
        if report:
            row += words(REPORT_TOKENS)
        return torch.tensor([row] * batch, device=self.device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleave(jobs: dict, rounds: int, device: str) -> dict:
    times = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


# -- generation ---------------------------------------------------------------------------------------------------------
def bench_generation(systems: Systems, batches, rounds: int, new_tokens: int, static: bool) -> dict:
    v = systems.configs["ours"].vision_config
    out = {}
    for b in batches:
        pixels = torch.randn(b, 1, 3, v.image_size, v.image_size, device=systems.device, dtype=systems.dtype)
        jobs = {}
        for name in ("ours", "peer"):
            ids = systems.input_ids(name, b)

            def job(name=name, ids=ids, tokens=new_tokens):
                with systems.use(name) as model, torch.inference_mode():
                    extra = {"cache_implementation": "static"} if static else {}
                    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                               pixel_values=pixels, max_new_tokens=tokens, min_new_tokens=tokens,
                                               do_sample=False, **extra)
                assert generated.shape[1] == ids.shape[1] + tokens
            job()  # warm-up (and compile, for the static cache)
            jobs[name] = job
        times = interleave(jobs, rounds, systems.device)
        row = {"reports_per_s": {k: b / statistics.median(t) for k, t in times.items()}, "seconds_per_round": times,
               f"generate_b{b}_speedup_vs_peer": statistics.median([p / o for o, p in zip(times["ours"],
                                                                                           times["peer"])])}
        if b == 1:  # decode step = (100 tokens - 1 token) / 99, against the bandwidth floor
            prefill = {}
            for name in ("ours", "peer"):
                ids = systems.input_ids(name, 1)
                one = lambda name=name, ids=ids: jobs_one(systems, name, ids, pixels)  # noqa: E731
                one()
                prefill[name] = statistics.median(interleave({name: one}, rounds, systems.device)[name])
            row["decode_step_ms"] = {k: 1e3 * (statistics.median(times[k]) - prefill[k]) / (new_tokens - 1)
                                     for k in times}
            row["prefill_and_first_token_ms"] = {k: 1e3 * t for k, t in prefill.items()}
            floors = {}
            for name in ("ours", "peer"):
                config = systems.configs[name]
                prompt = systems.input_ids(name, 1).shape[1]
                kv = cost.kv_cache_bytes(config, prompt + new_tokens // 2)
                floors[name] = 1e3 * (cost.decode_weight_bytes(config) + kv) / cost.H100_HBM_BYTES_PER_S
            row["decode_step_floor_ms_h100"] = floors
            row["decode_step_over_floor"] = {k: row["decode_step_ms"][k] / floors[k] for k in floors}
        out[f"b{b}"] = row
    return out


def jobs_one(systems, name, ids, pixels) -> None:
    with systems.use(name) as model, torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels[:1],
                       max_new_tokens=1, do_sample=False)


# -- training -------------------------------------------------------------------------------------------------------------
def trainable(systems: Systems, name: str, stage: int) -> list:
    """The stage's trainable parameters of `name` (set requires_grad on them only)."""
    systems.model.requires_grad_(False)
    connector = systems.connectors[name]
    groups = [connector.adapters["image"], systems.model.model.view_embedding]
    if name == "ours":
        groups.append(connector.memory_bank)
        if stage == 2:
            groups.append(connector.adapters["reference"])
    params = [p for g in groups for p in g.parameters()]
    if stage == 2:
        params += [p for n, p in systems.model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def training_batch(systems: Systems, name: str, stage: int, batch: int) -> dict:
    config = systems.configs[name]
    modalities = ("image", "reference") if name == "ours" and stage == 2 else ("image",)
    ids = systems.input_ids(name, batch, modalities, report=True)
    labels = torch.full_like(ids, -100)
    labels[:, -REPORT_TOKENS:] = ids[:, -REPORT_TOKENS:]
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
           "image_features": torch.randn(batch, 1, patches, config.vision_config.hidden_size, device=systems.device,
                                         dtype=systems.dtype)}
    if "reference" in modalities:
        out["reference_features"] = torch.randn(batch, REFERENCE_TOKENS, config.text_encoder_config.hidden_size,
                                                device=systems.device, dtype=systems.dtype)
        out["reference_attention_mask"] = torch.ones(batch, REFERENCE_TOKENS, dtype=torch.long, device=systems.device)
    return out


def bench_training(systems: Systems, batches: dict, rounds: int, steps: int) -> dict:
    from peft import LoraConfig, inject_adapter_in_model

    for connector in systems.connectors.values():
        connector.float()  # as run_stage's upcast_trainables: the adapters train in float32
    out = {}
    for stage in (1, 2):
        if stage == 2:  # LoRA r16 on the LLM's 7 linear layers, shared by both systems (one copy of the LLM)
            targets = r".*language_model.*\.(" + "|".join(cost.LORA_TARGETS) + ")"
            inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets),
                                    systems.model)
            systems.model.to(systems.device)
        jobs, peaks, optimizers, data = {}, {}, {}, {}
        for name in ("ours", "peer"):
            data[name] = training_batch(systems, name, stage, batches[name])
            params = trainable(systems, name, stage)
            optimizers[name] = (params, torch.optim.AdamW(params, lr=1e-5, foreach=True))

            def job(name=name):
                params, optimizer = optimizers[name]
                systems.model.requires_grad_(False)
                for p in params:
                    p.requires_grad_(True)
                with systems.use(name) as model:
                    model.train()
                    for _ in range(steps):
                        model(**data[name]).loss.backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            if systems.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            job()  # warm-up; its peak is the step's peak memory
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if systems.device == "cuda" else None
            jobs[name] = job
        times = interleave(jobs, rounds, systems.device)
        row = {"batch_size": batches, "steps_per_round": steps, "seconds_per_round": times,
               "samples_per_s": {k: batches[k] * steps / statistics.median(t) for k, t in times.items()},
               "peak_allocated_GiB": peaks}
        row[f"stage{stage}_train_speedup_vs_peer"] = row["samples_per_s"]["ours"] / row["samples_per_s"]["peer"]
        work = cost.Workload(prompt_tokens=PROMPT_TOKENS, report_tokens=REPORT_TOKENS,
                             reference_tokens=REFERENCE_TOKENS, views=1)
        mfu = {}
        for name in ("ours", "peer"):
            spec = next(s for s in cost.STAGES[name] if s.name == f"s{stage}")
            flops = cost.analytic_flops(systems.configs[name], spec, work)
            per_sample = sum(flops.values()) - flops["image_encoder"] - flops["text_encoder"]  # cached features
            mfu[name] = {"model_flops_per_sample": per_sample,
                         "mfu_h100": row["samples_per_s"][name] * per_sample / cost.H100_BF16_FLOPS}
        row["model_flops_utilization"] = mfu
        out[f"stage{stage}"] = row
        for name in data:
            optimizers[name] = None
    return out


def bench_encoder(systems: Systems, rounds: int, batch: int = 8) -> dict:
    v = systems.configs["ours"].vision_config
    pixels = torch.randn(batch, 1, 3, v.image_size, v.image_size, device=systems.device, dtype=systems.dtype)
    systems.model.eval()
    job = lambda: systems.model.model.encode_images(pixels)  # noqa: E731
    job()
    seconds = statistics.median(interleave({"encoder": job}, rounds, systems.device)["encoder"])
    return {"batch": batch, "ms_per_image": 1e3 * seconds / batch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--gen-batches", default="1,8,32")
    parser.add_argument("--train-batch-ours", type=int, default=16)
    parser.add_argument("--train-batch-peer", type=int, default=4)
    parser.add_argument("--only", default="generate,static,encoder,train")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 adapters
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    result = {"benchmark": "GPU side by side, ours (sma) vs peer (llava), random weights", "size": args.size,
              "dtype": str(dtype), "environment": environment(args.device), "new_tokens_forced": args.new_tokens,
              "workload": {"prompt_tokens": PROMPT_TOKENS, "report_tokens": REPORT_TOKENS,
                           "reference_tokens": REFERENCE_TOKENS, "views": 1}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(key, value):
        result[key] = value
        out.write_text(json.dumps(result, indent=2))
        print(key, json.dumps(value, indent=1), flush=True)
    start = time.perf_counter()
    systems = Systems(args.size, args.device, dtype)
    result["attn_implementation"] = systems.model.model.language_model.config._attn_implementation
    save("build_seconds", time.perf_counter() - start)
    parts = args.only.split(",")
    batches = [int(b) for b in args.gen_batches.split(",")]
    for part, fn in (("encoder", lambda: bench_encoder(systems, args.rounds)),
                     ("generate", lambda: bench_generation(systems, batches, args.rounds, args.new_tokens, False)),
                     ("static", lambda: bench_generation(systems, batches[:1], args.rounds, args.new_tokens, True)),
                     ("train", lambda: bench_training(systems, {"ours": args.train_batch_ours,
                                                                "peer": args.train_batch_peer},
                                                      args.rounds, args.steps))):
        if part in parts:
            try:
                save({"encoder": "frozen_image_encoder", "generate": "generation",
                      "static": "generation_static_cache", "train": "training"}[part], fn())
            except Exception as err:  # one failed part must not lose the others' figures
                save(f"{part}_error", f"{type(err).__name__}: {err}")
    save("total_seconds", time.perf_counter() - start)


if __name__ == "__main__":
    main()
