"""Report generation from images alone (S2D-Align's inference: context `Z_v` only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm


def load_model(model_dir: str, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a saved S2D-Align folder (model + processor) for generation."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import s2d_align  # noqa: F401  (registers the classes: no remote code needed in this process)

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
    processor = AutoProcessor.from_pretrained(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


@torch.inference_mode()
def generate_reports(model, processor, studies: list, *, batch_size: int = 16, max_new_tokens: int = 128,
                     num_beams: int = 1, progress: bool = True) -> list[str]:
    """One findings text per study; `studies` holds an image (path / PIL / array) or a list of views per study.

    Greedy decoding by default; batches are left-padded so they generate exactly what single studies do.
    """
    reports = []
    batches = range(0, len(studies), batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        inputs = processor(images=studies[start: start + batch_size]).to(model.device)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        reports.extend(processor.batch_decode(out, prompt_length=inputs["input_ids"].shape[1]))
    return reports


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="write findings for chest X-rays")
    parser.add_argument("--model", required=True, help="a saved S2D-Align folder")
    parser.add_argument("--images", nargs="+", required=True,
                        help="one argument per study; join the views of one study with commas (frontal first)")
    parser.add_argument("--out", help="JSONL file for {id, report} rows (default: print)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    model, processor = load_model(args.model)
    studies = [arg.split(",") for arg in args.images]
    reports = generate_reports(model, processor, studies, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    rows = [{"id": Path(views[0]).stem, "images": views, "report": report} for views, report in zip(studies, reports)]
    if args.out:
        write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} reports to {args.out}")
    else:
        for row in rows:
            print(f"{row['id']}: {row['report']}")
    return 0
