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
def generate_reports(model, processor, studies: list, *, batch_size: int = 16, max_new_tokens: int | None = None,
                     num_beams: int = 1, progress: bool = True, view_positions: list | None = None) -> list[str]:
    """One findings text per study; `studies` holds an image (path / PIL / array) or a list of views per study.

    `view_positions` (one list of DICOM ViewPosition strings per study, optional) pick the views of studies with
    more than `max_views` images by the view rule (frontal first, then lateral); without them the given order
    counts. `max_new_tokens` defaults to the longest training target, `processor.max_report_tokens` + EOS.
    Greedy decoding by default; batches are left-padded so they generate exactly what single studies do.
    """
    max_new_tokens = max_new_tokens or processor.max_report_tokens + 1
    reports = []
    batches = range(0, len(studies), batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        positions = view_positions[start: start + batch_size] if view_positions is not None else None
        inputs = processor(images=studies[start: start + batch_size], view_positions=positions).to(model.device)
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
    parser = subparsers.add_parser("generate", help="write the model's report section (findings or impression) "
                                                    "for chest X-rays")
    parser.add_argument("--model", required=True, help="a saved S2D-Align folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+",
                        help="one argument per study; join the views of one study with commas (frontal first)")
    source.add_argument("--dataset", help="a DatasetDict from `s2d prepare`: generate for every study of --split "
                                          "(its ids, and its view positions to pick the views)")
    parser.add_argument("--split", default="test", help="split of --dataset (default: test)")
    parser.add_argument("--references-out", help="with --dataset: also write its reports as JSONL {id, report} "
                                                 "(the references of `s2d eval`)")
    parser.add_argument("--out", help="JSONL file for {id, images, report, section} rows (default: print)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default: the longest training target, the processor's max_report_tokens + EOS")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.set_defaults(func=_run)


def _dataset_studies(path: str, split: str) -> tuple[list, list, list, list]:
    """ids, image lists, view positions and reports of one split of a prepared dataset."""
    from datasets import DatasetDict, load_from_disk

    if not (Path(path) / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{path} is not a dataset from `s2d prepare` (no dataset_dict.json)")
    dataset = load_from_disk(path)
    if not isinstance(dataset, DatasetDict) or split not in dataset:
        raise ValueError(f"dataset {path} has no {split!r} split (it has {sorted(dataset)})")
    rows = dataset[split]
    if len(rows) == 0:
        raise ValueError(f"dataset {path} split {split!r} is empty")
    positions = rows["view_positions"] if "view_positions" in rows.column_names else None
    return list(rows["id"]), [list(p) for p in rows["image_paths"]], positions, list(rows["report"])


def _run(args) -> int:
    if args.references_out and not args.dataset:
        raise ValueError("--references-out needs --dataset (the reports come from the dataset)")
    if args.dataset:
        ids, studies, positions, references = _dataset_studies(args.dataset, args.split)
    else:
        studies, positions = [arg.split(",") for arg in args.images], None
        ids = [Path(views[0]).stem for views in studies]
    model, processor = load_model(args.model)
    section = getattr(model.config, "section", "findings")
    if args.dataset:
        from .data.prepare import dataset_section

        if dataset_section(args.dataset) != section:  # its reports would be the wrong references
            raise ValueError(f"{args.model} writes the {section} section but dataset {args.dataset} holds the "
                             f"{dataset_section(args.dataset)} section")
    reports = generate_reports(model, processor, studies, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, view_positions=positions)
    rows = [{"id": sid, "images": views, "report": report, "section": section}
            for sid, views, report in zip(ids, studies, reports)]
    if args.references_out:
        write_jsonl(args.references_out, [{"id": sid, "report": ref} for sid, ref in zip(ids, references)])
        print(f"wrote {len(ids)} references to {args.references_out}")
    if args.out:
        write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} reports to {args.out}")
    else:
        for row in rows:
            print(f"{row['id']}: {row['report']}")
    return 0
