"""Where the image adapter looks on the phantom set: attention mass inside each focal opacity's box vs the mirror box.

    python -m bench.attention_zones --model out/demo/final --data out/demo/data [--split test] [--out FILE.json]

Every study of the split with a focal opacity counts (its box comes from the phantom's `locations`). With
`--extract-fixture DIR` it also writes the weights that decide the attention (vision encoder, view embedding, memory
bank, the image adapter's input projection and attention) with the model's config: tests/fixtures/demo_image_attention.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_ATTENTION_PREFIXES = ("model.vision_tower.", "model.view_embedding.", "model.connector.memory_bank.",
                            "model.connector.adapters.image.input_proj.", "model.connector.adapters.image.attention.")


def split_figure(model_dir: str, data_dir: str, split: str) -> dict:
    from datasets import load_from_disk

    from s2d_align.attention import opacity_zone_masses
    from s2d_align.generation import load_model

    rows = load_from_disk(data_dir)[split]
    ids, images, boxes = [], [], []
    for row in rows:
        opacity = [loc for loc in json.loads(row["locations"]) if loc["finding"] == "opacity"]
        if opacity:
            ids.append(row["id"])
            images.append(row["image_paths"][0])
            boxes.append(opacity[0]["bbox"])
    if not ids:
        raise ValueError(f"{data_dir} split {split!r} has no study with a focal opacity")
    model, processor = load_model(model_dir, device="cpu")
    figure = opacity_zone_masses(model, processor, images, boxes)
    return {"model": model_dir, "data": data_dir, "split": split, "ids": ids, **figure}


def extract_fixture(model_dir: str, out_dir: str) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as weights:
        keep = {k: weights.get_tensor(k).contiguous() for k in weights.keys() if k.startswith(IMAGE_ATTENTION_PREFIXES)}
    save_file(keep, str(out / "image_attention.safetensors"), metadata={"source": str(model_dir)})
    (out / "config.json").write_text((Path(model_dir) / "config.json").read_text())
    return sorted(keep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="the phantom DatasetDict the model was trained on (its split is scored)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="JSON file for the figure")
    parser.add_argument("--extract-fixture", metavar="DIR")
    args = parser.parse_args(argv)
    if args.extract_fixture:
        print(f"wrote {len(extract_fixture(args.model, args.extract_fixture))} tensors to {args.extract_fixture}")
    if args.data:
        figure = split_figure(args.model, args.data, args.split)
        print(f"{figure['studies']} studies with a focal opacity: attention mass inside its box "
              f"{figure['mean_inside']:.4f}, in the mirror box {figure['mean_mirror']:.4f} (mean); inside larger in "
              f"{figure['inside_larger']}/{figure['studies']}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(figure, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
