"""CPU side-by-side benchmark: S2D-Align (memory adapter, 64 image tokens) against its LLaVA-style peer (`connector:
llava`, every patch an LLM token), measured in one run, interleaved A, B, A, B so that the load other processes put on
a shared machine falls on both; every figure is a ratio of the two. Also the frozen-feature cache over a short
three-stage curriculum, and data-side throughputs on real text.

    OMP_NUM_THREADS=1 python -m bench.cpu_ratios --out bench/results/cpu_ratios.json [--only train,generate,...]

Shapes (the CPU stand-in of the real model): Rad-DINO's token geometry, 518 px images in 14 px patches (1,369 patch
tokens per view), with reduced widths and depths (vision 64 wide x 2 layers, text encoder 32 x 2, LLM 256 wide x
4 layers, vocabulary 1,024), N_mem 64, one view per study, real IU X-Ray reports as targets. Training steps start from
cached frozen features (train_sft.py's default path; the image encoder is measured separately by the curriculum
section) and include the AdamW step; stage 2 is LoRA r16 on the LLM's 7 linear layers plus, for ours, the reference
adapter on a reference report, and for the peer RRG24's stage 2 (projector + LoRA, image only). Memory on a CPU: the
bytes autograd saves for the backward in one step (activation memory, the term that grows with the prefix), counted
with `torch.autograd.graph.saved_tensors_hooks`; peak allocated GPU memory is recorded by bench/run_gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

RADIOGRAPHS = sorted((Path(__file__).resolve().parents[1] / "s2d_align" / "resources" / "radiographs").glob("*.png"))
SHAPES = dict(image_size=518, patch_size=14, vision_width=64, vision_layers=2, llm_width=256, llm_layers=4,
              num_memory_queries=64, vocab_size=1024, max_views=1)
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def build(connector: str, seed: int = 0):
    from s2d_align.tiny import build_tiny

    shapes = {k: v for k, v in SHAPES.items() if k != "vocab_size"}
    return build_tiny(vocab_size=SHAPES["vocab_size"], seed=seed, connector=connector, **shapes)


def reports(n: int) -> list[str]:
    from s2d_align.tiny import iu_xray_reports

    texts = [t for t in iu_xray_reports() if 30 <= len(t.split()) <= 60]  # typical findings, 40-90 tokens here
    return texts[:n]


CPU_SECONDS = {}  # {name: [process CPU seconds per round]} of the last `interleave` call


def interleave(jobs: dict, rounds: int) -> dict:
    """Run each job once per round, in turn (A, B, A, B, ...); returns {name: [wall seconds per round]}, and leaves
    the process CPU seconds of each in `CPU_SECONDS` (on a shared machine the wall clock also counts the time other
    processes take the cores; the benchmark runs one thread, so CPU time is its own work)."""
    times = {name: [] for name in jobs}
    CPU_SECONDS.clear()
    CPU_SECONDS.update({name: [] for name in jobs})
    for _ in range(rounds):
        for name, job in jobs.items():
            start, cpu = time.perf_counter(), time.process_time()
            job()
            times[name].append(time.perf_counter() - start)
            CPU_SECONDS[name].append(time.process_time() - cpu)
    return times


def cpu_ratio(slow: str, fast: str) -> dict:
    """Per-round ratio slow / fast of the CPU seconds of the last `interleave`, and its median."""
    per_round = [s / f for f, s in zip(CPU_SECONDS[fast], CPU_SECONDS[slow])]
    return {"cpu_seconds_per_round": {k: list(v) for k, v in CPU_SECONDS.items()}, "cpu_ratio_per_round": per_round,
            "cpu_ratio_median": statistics.median(per_round)}


def saved_activation_bytes(step) -> int:
    """Bytes of the tensors autograd saves for the backward during `step()` (each storage counted once)."""
    seen = {}

    def pack(tensor):
        try:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


# -- training steps ---------------------------------------------------------------------------------------------------
def training_setup(connector: str, stage: int, batch_size: int):
    """A model in a stage's training state, a batch from cached features, and a step function (fwd, bwd, AdamW)."""
    from peft import LoraConfig, get_peft_model

    model, processor = build(connector)
    texts = reports(batch_size + 1)
    images = [[str(RADIOGRAPHS[i % len(RADIOGRAPHS)])] for i in range(batch_size)]
    peer_stage2 = connector == "llava" and stage == 2  # RRG24: image only, projector + LoRA
    references = texts[1:] if stage == 2 and not peer_stage2 else None
    batch = dict(processor(images=images, suffix=texts[:batch_size], references=references))
    with torch.no_grad():
        batch["image_features"] = model.model.encode_images(batch.pop("pixel_values"), batch["view_mask"])
        if references is not None:
            batch["reference_features"] = model.model.encode_text(batch.pop("reference_input_ids"),
                                                                 batch["reference_attention_mask"])
    whole = model
    if stage == 2:
        whole = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS))
    model.set_stage(stage)
    if peer_stage2:  # its reference adapter never runs: keep it out of the optimizer
        for name, param in model.named_parameters():
            if "adapters.reference" in name or "memory_bank" in name:
                param.requires_grad_(False)
    model.train()
    optimizer = torch.optim.AdamW([p for p in whole.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = whole(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, batch


def bench_training(batch_size: int, rounds: int, steps: int) -> dict:
    out = {}
    for stage in (1, 2):
        step_ours, batch_ours = training_setup("sma", stage, batch_size)
        step_peer, batch_peer = training_setup("llava", stage, batch_size)
        step_ours(), step_peer()  # warm-up
        memory = {"ours": saved_activation_bytes(step_ours), "peer": saved_activation_bytes(step_peer)}
        times = interleave({"ours": lambda: [step_ours() for _ in range(steps)],
                            "peer": lambda: [step_peer() for _ in range(steps)]}, rounds)
        per_round = [p / o for o, p in zip(times["ours"], times["peer"])]
        out[f"stage{stage}"] = {
            "samples_per_s": {k: batch_size * steps / statistics.median(v) for k, v in times.items()},
            "seconds_per_round": times, "speedup_per_round": per_round,
            f"stage{stage}_train_speedup_vs_peer": statistics.median(per_round),
            "llm_tokens_per_sample": {"ours": int(batch_ours["attention_mask"].sum(1).float().mean()),
                                      "peer": int(batch_peer["attention_mask"].sum(1).float().mean())},
            "saved_activation_MB": {k: v / 2**20 for k, v in memory.items()},
            "activation_memory_peer_over_ours": memory["peer"] / memory["ours"],
            "by_cpu_time": cpu_ratio("peer", "ours"),
        }
        del step_ours, step_peer
    return out


# -- generation ---------------------------------------------------------------------------------------------------------
def bench_generation(batches: tuple, rounds: int, new_tokens: int) -> dict:
    models = {name: build(connector) for name, connector in (("ours", "sma"), ("peer", "llava"))}
    out = {}
    for b in batches:
        jobs = {}
        for name, (model, processor) in models.items():
            model.eval()
            inputs = processor(images=[[str(RADIOGRAPHS[i % len(RADIOGRAPHS)])] for i in range(b)])

            def job(model=model, inputs=inputs):
                with torch.inference_mode():
                    generated = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                               do_sample=False)
                assert generated.shape[1] - inputs["input_ids"].shape[1] == new_tokens
            job()  # warm-up
            jobs[name] = job
        times = interleave(jobs, rounds)
        per_round = [p / o for o, p in zip(times["ours"], times["peer"])]
        out[f"b{b}"] = {"reports_per_s": {k: b / statistics.median(v) for k, v in times.items()},
                        "seconds_per_round": times, "speedup_per_round": per_round,
                        f"generate_b{b}_speedup_vs_peer": statistics.median(per_round),
                        "by_cpu_time": cpu_ratio("peer", "ours")}
    return out


# -- feature cache over a short curriculum --------------------------------------------------------------------------
def bench_curriculum(work: Path, patients: int, rounds: int) -> dict:
    """Stages s1 -> s2 -> s3 (one epoch each, the demo's model sizes and batch 16) with and without the frozen-feature
    cache; the cache is deleted before every cached run, so its computation is counted each time."""
    from s2d_align.data.phantom.generate import generate_phantom
    from s2d_align.tiny import build_tiny
    from s2d_align.training.features import remove_caches
    from s2d_align.training.run import run_stage

    data = work / "phantom"
    generate_phantom(data, num_patients=patients, seed=0, image_size=128)
    model, processor = build_tiny(vocab_size=1024, seed=0, image_size=64, patch_size=8, vision_width=64,
                                  vision_layers=2, llm_width=192, llm_layers=3, num_memory_queries=16)
    model.save_pretrained(work / "base")
    processor.save_pretrained(work / "base")
    from datasets import load_from_disk

    train_rows = len(load_from_disk(str(data))["train"])

    def curriculum(cache: bool):
        remove_caches(data)
        current, root = str(work / "base"), work / ("cached" if cache else "live")
        for stage in ("s1", "s2", "s3"):
            current = run_stage(current, str(data), str(root / stage), stage, feature_cache=cache,
                                num_train_epochs=1, per_device_train_batch_size=16, use_cpu=True, bf16=False,
                                gradient_checkpointing=False, activation_checkpointing=False, save_strategy="no",
                                logging_steps=1000, disable_tqdm=True, report_to=[], seed=0)
        shutil.rmtree(root, ignore_errors=True)
    times = interleave({"cached": lambda: curriculum(True), "uncached": lambda: curriculum(False)}, rounds)
    per_round = [u / c for c, u in zip(times["cached"], times["uncached"])]
    return {"train_rows": train_rows, "patients": patients, "epochs_per_stage": 1, "batch_size": 16,
            "model": "demo sizes: 64 px / patch 8 (64 patches), vision 64 x 2, LLM 192 x 3, N_mem 16",
            "seconds_per_round": times, "speedup_per_round": per_round,
            "curriculum_cache_speedup": statistics.median(per_round),
            "by_cpu_time": cpu_ratio("uncached", "cached")}


# -- data side ---------------------------------------------------------------------------------------------------------
def bench_data(work: Path, patients: int) -> dict:
    from bench.labeler_speed import iu_reports
    from s2d_align.data.phantom.generate import generate_phantom
    from s2d_align.data.prepare import prepare
    from s2d_align.keyphrases import extract_key_phrases

    texts = iu_reports()
    start, cpu = time.perf_counter(), time.process_time()
    phrases = [extract_key_phrases(t) for t in texts]
    keyphrase = {"reports": len(texts), "phrases": sum(map(len, phrases)),
                 "reports_per_s_wall": len(texts) / (time.perf_counter() - start),
                 "reports_per_s_cpu": len(texts) / (time.process_time() - cpu)}
    start, cpu = time.perf_counter(), time.process_time()
    dsd = generate_phantom(work / "phantom_data", num_patients=patients, seed=1, image_size=128)
    images = sum(len(p) for split in dsd.values() for p in split["image_paths"])
    phantom = {"patients": patients, "images": images, "image_size": 128,
               "images_per_s_wall": images / (time.perf_counter() - start),
               "images_per_s_cpu": images / (time.process_time() - cpu),
               "includes": "rendering, PNG writing, reports, key phrases, references, save_to_disk"}
    # IU X-Ray images are not shipped: empty files stand at the annotation's image paths (verify_images=False checks
    # only that they exist), so this times the text side of `s2d prepare` on the real reports
    images_root = work / "iu_images"
    annotation = json.loads((Path(__file__).resolve().parents[1] / "s2d_align" / "resources" / "iu_xray" /
                             "annotation.json").read_text())
    for entry in (e for split in annotation.values() for e in split):
        for path in entry["image_path"]:
            (images_root / path).parent.mkdir(parents=True, exist_ok=True)
            (images_root / path).touch()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        dsd = prepare("iu_xray", work / "iu", image_root=images_root, verify_images=False, missing_images="error",
                      keyphrases="rules", reference="none")
        rows = sum(len(split) for split in dsd.values())
        iu = {"rows": rows, "rows_per_s_wall": rows / (time.perf_counter() - start),
              "rows_per_s_cpu": rows / (time.process_time() - cpu),
              "options": "bundled R2Gen annotation + Open-i reports, rules key phrases, no references, images "
                         "not read (empty stand-in files: IU images are not shipped)"}
    except Exception as err:  # recorded, not fatal: the other figures stand
        iu = {"error": f"{type(err).__name__}: {err}"}
    return {"keyphrase_extractor_rules": keyphrase, "phantom_generation": phantom, "s2d_prepare_iu_xray": iu}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/cpu_ratios.json")
    parser.add_argument("--only", default="train,generate,curriculum,data")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--curriculum-patients", type=int, default=60)
    parser.add_argument("--curriculum-rounds", type=int, default=2)
    parser.add_argument("--data-patients", type=int, default=100)
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        raise SystemExit("set OMP_NUM_THREADS explicitly (e.g. OMP_NUM_THREADS=1): the JSON records it")
    torch.manual_seed(0)
    from bench.environment import environment

    parts = args.only.split(",")
    result = {"benchmark": "CPU side by side, ours (sma) vs peer (llava)", "shapes": SHAPES,
              "batch_size": args.batch_size, "rounds": args.rounds, "environment_start": environment()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        result["environment_end"] = environment()
        out.write_text(json.dumps(result, indent=2))
    with tempfile.TemporaryDirectory(prefix="s2d_bench_") as tmp:
        if "train" in parts:
            result["training"] = bench_training(args.batch_size, args.rounds, args.steps)
            save()
        if "generate" in parts:
            result["generation"] = bench_generation((1, 8), args.rounds, args.new_tokens)
            result["generation"]["new_tokens_forced"] = args.new_tokens
            save()
        if "curriculum" in parts:
            result["feature_cache_curriculum"] = bench_curriculum(Path(tmp), args.curriculum_patients,
                                                                  args.curriculum_rounds)
            save()
        if "data" in parts:
            result["data_side"] = bench_data(Path(tmp), args.data_patients)
            save()
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("environment")}, indent=1))


if __name__ == "__main__":
    main()
