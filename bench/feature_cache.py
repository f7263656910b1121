"""Benchmark: a stage-1 training step from pixels (frozen encoder run every step) vs from cached encoder features.

Both are measured in the same run on the same model and batch; the result is the ratio, written as JSON.
    python -m bench.feature_cache --out out/bench/feature_cache.json [--image-size 224 --patch-size 14]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from s2d_align.tiny import build_tiny

RADIOGRAPHS = sorted((Path(__file__).resolve().parents[1] / "s2d_align" / "resources" / "radiographs").glob("*.png"))


def _time_steps(model, batch: dict, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model(**batch).loss.backward()  # warm-up
    optimizer.zero_grad()
    start = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def run(image_size: int, patch_size: int, vision_layers: int, batch_size: int, steps: int) -> dict:
    model, processor = build_tiny(vocab_size=512, image_size=image_size, patch_size=patch_size,
                                  vision_width=192, vision_layers=vision_layers, llm_width=256, llm_layers=4)
    model.set_stage(1)
    model.train()
    images = [[str(RADIOGRAPHS[i % len(RADIOGRAPHS)])] for i in range(batch_size)]
    batch = dict(processor(images=images, suffix=["The heart is normal in size. The lungs are clear."] * batch_size))
    with torch.no_grad():
        features = model.model.encode_images(batch["pixel_values"], batch["view_mask"])
    cached = {k: v for k, v in batch.items() if k != "pixel_values"} | {"image_features": features}
    pixels_s = _time_steps(model, batch, steps)
    cached_s = _time_steps(model, cached, steps)
    return {"what": "stage-1 training step (forward + backward + AdamW), tiny model", "image_size": image_size,
            "patch_tokens": (image_size // patch_size) ** 2, "vision_layers": vision_layers,
            "batch_size": batch_size, "steps": steps, "seconds_per_step_pixels": pixels_s,
            "seconds_per_step_cached": cached_s, "speedup_cached_over_pixels": pixels_s / cached_s,
            "device": "cpu", "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/bench/feature_cache.json")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--vision-layers", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    result = run(args.image_size, args.patch_size, args.vision_layers, args.batch_size, args.steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
