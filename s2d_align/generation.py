"""Report generation from images alone (S2D-Align's inference: context `Z_v` only)."""

from __future__ import annotations

import json
import sys
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


# What a study's images can fail with: unreadable / tiny / missing files (load_radiograph's messages name the file).
IMAGE_ERRORS = (ValueError, FileNotFoundError, OSError)


def _load_study(views, positions, max_views: int, masks=None) -> tuple[list, list | None]:
    """The views the model sees (the processor's view rule), opened as 8-bit RGB, and their anatomy masks (unopened)
    when given; raises naming a bad file."""
    from processing_s2d import load_radiograph, select_views

    views = list(views) if isinstance(views, (list, tuple)) else [views]
    if not views:
        raise ValueError("the study has no images")
    if masks is not None:
        masks = list(masks) if isinstance(masks, (list, tuple)) else [masks]
        if len(masks) != len(views):
            raise ValueError(f"the study has {len(views)} images but {len(masks)} anatomy masks")
    keep = select_views(views, positions, max_views)
    return [load_radiograph(views[i]) for i in keep], None if masks is None else [masks[i] for i in keep]


@torch.inference_mode()
def generate_rows(model, processor, studies: list, *, batch_size: int = 16, max_new_tokens: int | None = None,
                  num_beams: int = 1, progress: bool = True, view_positions: list | None = None,
                  anatomy_masks: list | None = None) -> list[dict]:
    """One row per study, in order: `{"report": text}`, or `{"error": message}` for a study whose images cannot be
    read (missing, not an image, smaller than 16 px); the other studies of its batch are generated as usual.

    `studies` holds an image (path / PIL / array) or a list of views per study. `view_positions` (one list of DICOM
    ViewPosition strings per study, optional) pick the views of studies with more than `max_views` images by the
    view rule (frontal first, then lateral); without them the given order counts. `max_new_tokens` defaults to the
    longest training target, `processor.max_report_tokens` + EOS. Greedy decoding by default (`num_beams` > 1: beam
    search); batches are left-padded so they generate exactly what single studies do. `anatomy_masks` (laid out like
    `studies`, one mask per image): for a model with `anatomical_bias: masks`.
    """
    max_new_tokens = max_new_tokens or processor.max_report_tokens + 1
    rows: list[dict] = []
    for start in tqdm(range(0, len(studies), batch_size), desc="generating", unit="batch", disable=not progress):
        loaded = {}
        for index in range(start, min(start + batch_size, len(studies))):
            positions = view_positions[index] if view_positions is not None else None
            try:
                loaded[index] = _load_study(studies[index], positions, processor.max_views,
                                            anatomy_masks[index] if anatomy_masks is not None else None)
            except IMAGE_ERRORS as err:  # one bad file must not cost the batch its reports
                rows.append({"error": str(err)})
                continue
            rows.append(None)  # filled in below, keeping the input order
        if loaded:
            images, masks = zip(*loaded.values())
            inputs = processor(images=list(images),
                               anatomy_masks=list(masks) if anatomy_masks is not None else None).to(model.device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
            reports = processor.batch_decode(out, prompt_length=inputs["input_ids"].shape[1])
            for index, report in zip(loaded, reports):
                rows[index] = {"report": report}
    return rows


def generate_reports(model, processor, studies: list, **kwargs) -> list[str]:
    """One findings text per study (arguments as `generate_rows`); raises `ValueError` at the first unreadable
    study instead of returning an error row (for callers that need every report, e.g. the demo's evaluation)."""
    rows = generate_rows(model, processor, studies, **kwargs)
    for index, row in enumerate(rows):
        if "error" in row:
            raise ValueError(f"study {index}: {row['error']}")
    return [row["report"] for row in rows]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="write the model's report section (findings or impression) for chest X-rays",
        description="Generate findings for studies given on the command line, in a prepared dataset split or in a "
                    "JSONL file; batched, with a progress bar. Under `accelerate launch` the studies are split "
                    "across the processes and one file is written, in input order. A study whose images cannot be "
                    "read gets a row with an `error` field instead of a `report`.")
    parser.add_argument("--model", required=True, help="a saved S2D-Align folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+",
                        help="one argument per study; join the views of one study with commas (frontal first)")
    source.add_argument("--dataset", help="a DatasetDict from `s2d prepare`: generate for every study of --split "
                                          "(its ids, and its view positions to pick the views)")
    source.add_argument("--studies", help="a JSONL file, one study per line: {\"id\": ..., \"images\": [paths], "
                                          "\"view_positions\": [...] (optional)}; relative paths are read from the "
                                          "file's folder")
    parser.add_argument("--split", default="test", help="split of --dataset (default: test)")
    parser.add_argument("--references-out", help="with --dataset: also write its reports as JSONL {id, report} "
                                                 "(the references of `s2d eval`)")
    parser.add_argument("--out", help="JSONL file for {id, images, report, section} rows (default: print)")
    parser.add_argument("--attention-maps", metavar="DIR",
                        help="also write one heat-map PNG per study, <id>.png: where the image adapter's memory "
                             "queries looked (s2d_align.attention), its views side by side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default: the longest training target, the processor's max_report_tokens + EOS")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy, the default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def _dataset_masks(path: str, split: str) -> list | None:
    """The `anatomy_mask_paths` of one split of a prepared dataset, None when it has no such column."""
    from datasets import load_from_disk

    rows = load_from_disk(path)[split]
    return [list(m) for m in rows["anatomy_mask_paths"]] if "anatomy_mask_paths" in rows.column_names else None


def read_studies(path: str) -> tuple[list, list, list | None]:
    """ids, image lists and view positions (None when no line has them) of a studies JSONL file.

    A line is `{"id": ..., "images": [path, ...]}` (or `"image": path`), optionally with `"view_positions"`; the
    rows of `s2d generate --out` qualify. Relative image paths are taken from the file's folder (a manifest moves
    with its images). Malformed lines raise `ValueError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"studies file not found: {path}")
    ids, studies, positions, seen = [], [], [], {}
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{where}: not a JSON object ({err})") from None
            if not isinstance(row, dict) or "id" not in row or not ("images" in row or "image" in row):
                raise ValueError(f"{where}: expected an object with \"id\" and \"images\" (or \"image\")")
            views = row["images"] if "images" in row else [row["image"]]
            views = [views] if isinstance(views, str) else views
            if not isinstance(views, list) or not views or not all(isinstance(v, str) and v for v in views):
                raise ValueError(f"{where}: \"images\" must be a non-empty list of paths, got {views!r}")
            sid = str(row["id"])
            if sid in seen:
                raise ValueError(f"{where}: duplicate id {sid!r} (first on line {seen[sid]})")
            seen[sid] = lineno
            ids.append(sid)
            studies.append([v if Path(v).is_absolute() else str(path.parent / v) for v in views])
            positions.append(row.get("view_positions"))
    if not ids:
        raise ValueError(f"{path}: no studies (empty file)")
    return ids, studies, positions if any(p for p in positions) else None


def _shard_rows(args, state, ids, studies, positions) -> list[tuple[int, dict]]:
    """This process's share of the studies (contiguous, `accelerate`'s split), generated: (input index, row)."""
    with state.split_between_processes(list(range(len(studies)))) as mine:
        mine = list(mine)
    model, processor = load_model(args.model, device=str(state.device))
    if args.attention_maps:  # a connector without cross-attention has no maps: say so before generating anything
        from s2d_align.attention import image_adapter

        image_adapter(model)
    pick = (lambda seq: [seq[i] for i in mine]) if mine else (lambda seq: [])
    shard_positions = pick(positions) if positions is not None else None
    masks = None
    if model.config.anatomical_bias == "masks":  # the bias needs each image's lung + heart mask
        masks = _dataset_masks(args.dataset, args.split) if args.dataset else None
        if masks is None:
            raise ValueError(f"{args.model} has anatomical_bias='masks': generate with --dataset holding an "
                             "`anatomy_mask_paths` column (`s2d prepare --anatomy-masks DIR`; the phantom has one)")
        masks = pick(masks)
    rows = generate_rows(model, processor, pick(studies), batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                         view_positions=shard_positions, progress=state.is_main_process and not args.no_progress,
                         anatomy_masks=masks)
    if args.attention_maps:
        _write_maps(args.attention_maps, model, processor, [ids[i] for i in mine], pick(studies), shard_positions,
                    rows, args.batch_size)
    return list(zip(mine, rows))


def _write_maps(out_dir, model, processor, ids, studies, positions, rows, batch_size) -> None:
    """One heat map per study that has a report (error rows have no image to draw on)."""
    from s2d_align.attention import study_attention_images, write_attention_maps

    good = [i for i, row in enumerate(rows) if "report" in row]
    results = study_attention_images(model, processor, [studies[i] for i in good],
                                     [positions[i] for i in good] if positions is not None else None, batch_size)
    paths = write_attention_maps(out_dir, [ids[i] for i in good], results)
    for i, path in zip(good, paths):
        rows[i]["attention_map"] = path


def _model_section(model_dir) -> str:
    """The report section a saved model writes (its config's `section`; "findings" for folders made before it)."""
    config = Path(model_dir) / "config.json"
    return json.loads(config.read_text()).get("section") or "findings" if config.is_file() else "findings"


def _run(args) -> int:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if args.references_out and not args.dataset:
        raise ValueError("--references-out needs --dataset (the reports come from the dataset)")
    if args.num_beams < 1 or args.batch_size < 1:
        raise ValueError("--num-beams and --batch-size must be >= 1")
    if args.dataset:
        ids, studies, positions, references = _dataset_studies(args.dataset, args.split)
    elif args.studies:
        ids, studies, positions = read_studies(args.studies)
    else:
        studies, positions = [arg.split(",") for arg in args.images], None
        ids = [Path(views[0]).stem for views in studies]
    section = _model_section(args.model)
    if args.dataset:
        from .data.prepare import dataset_section

        if dataset_section(args.dataset) != section:  # its reports would be the wrong references
            raise ValueError(f"{args.model} writes the {section} section but dataset {args.dataset} holds the "
                             f"{dataset_section(args.dataset)} section")
    state = PartialState()  # one process without `accelerate launch`; otherwise each takes its share
    indexed = _shard_rows(args, state, ids, studies, positions)
    if state.num_processes > 1:
        indexed = gather_object(indexed)
    if not state.is_main_process:
        return 0
    indexed.sort(key=lambda pair: pair[0])  # input order, whatever process generated a study
    rows = [{"id": ids[i], "images": studies[i], **row, "section": section} for i, row in indexed]
    failed = [row for row in rows if "error" in row]
    if args.references_out:
        write_jsonl(args.references_out, [{"id": sid, "report": ref} for sid, ref in zip(ids, references)])
        print(f"wrote {len(ids)} references to {args.references_out}")
    if args.out:
        write_jsonl(args.out, rows)
        print(f"wrote {len(rows) - len(failed)} reports and {len(failed)} error rows to {args.out}")
    else:
        for row in rows:
            print(f"{row['id']}: {row.get('report', 'ERROR ' + row.get('error', ''))}")
    if failed:
        print(f"s2d generate: {len(failed)} of {len(rows)} studies could not be read; first: {failed[0]['id']}: "
              f"{failed[0]['error']}", file=sys.stderr)
    return 2 if len(failed) == len(rows) else 0  # nothing generated at all: fail the command
