"""Publish a trained S2D-Align folder to the Hugging Face Hub with its remote code and a filled-in model card.

`s2d push --model DIR --repo-id NAME [--dry-run]`: checks the folder (config, safetensors weights, the three
remote-code files, the processor), renders `model_card.md` into `DIR/README.md` from the folder's
`training_info.json` and `eval.json` (when present), then uploads exactly the model files (`MODEL_FILES`: weights,
config, generation config, processor and tokenizers, remote code, model card with the `eval.json` /
`training_info.json` it was rendered from) and nothing else: a stage folder of
`train_sft.py` also holds logs, `training_args.json`, the unmerged `adapter/` and, from older versions, Trainer
`checkpoints/` with pickled optimizer states; none of them is published. `--dry-run` does everything but the upload
and lists what would be sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

REMOTE_CODE = ("configuration_s2d.py", "modeling_s2d.py", "processing_s2d.py")
# What a model repo holds, as glob patterns relative to the folder (`Path.glob`: `*` stays within one folder level,
# unlike the fnmatch patterns of `upload_folder`, where `*.safetensors` would also take `adapter/*.safetensors`).
MODEL_FILES = (
    "*.safetensors", "model.safetensors.index.json",  # weights
    "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "chat_template.json",  # processor
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt",
    "text_encoder_tokenizer/*",  # the processor's second tokenizer, saved in its own subfolder
    "*.py",  # remote code: the three files and whatever they import relatively (save_pretrained copies them)
    "README.md",  # the model card
    "eval.json", "training_info.json",  # what the card was rendered from (results, provenance), when present
)
TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
REAL_CHECKPOINTS = ("microsoft/rad-dino", "microsoft/BiomedVLP-CXR-BERT-specialized", "lmsys/vicuna-7b-v1.5")


def model_files(model_dir: Path) -> list[Path]:
    """The files of `model_dir` that `MODEL_FILES` selects, sorted."""
    return sorted({p for pattern in MODEL_FILES for p in model_dir.glob(pattern) if p.is_file()})


def check_folder(model_dir: Path) -> list[Path]:
    """The files to upload; raises ValueError naming the folder and what is wrong with it."""
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model folder: it has no config.json")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "s2d_align":
        raise ValueError(f"{model_dir}/config.json has model_type {config.get('model_type')!r}, not 's2d_align'")
    missing = [f for f in REMOTE_CODE + ("processor_config.json",) if not (model_dir / f).is_file()]
    if missing:
        raise ValueError(f"{model_dir} lacks {', '.join(missing)}: save it with the s2d_align package imported "
                         "(model.save_pretrained and processor.save_pretrained)")
    files = model_files(model_dir)
    if not any(p.suffix == ".safetensors" and p.parent == model_dir for p in files):
        raise ValueError(f"{model_dir} holds no .safetensors weights (pickled weights are never published)")
    return files


def _metrics_table(metrics: dict | None) -> tuple[str, str]:
    if not metrics:
        return "No evaluation results were recorded for this folder.", ""
    rows = metrics.get("table") or {}
    if not rows:  # fall back to every top-level number
        rows = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    header = "| " + " | ".join(rows) + " |\n|" + "---|" * len(rows) + "\n"
    table = header + "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in rows.values()) + " |"
    note = metrics.get("note", "")
    return table, note


def render_model_card(model_dir: Path, repo_id: str) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    info = _read_json(model_dir / "training_info.json") or {}
    metrics = _read_json(model_dir / "eval.json")
    total = info.get("total_parameters")
    table, note = _metrics_table(metrics)
    components = info.get("components", {})
    base_models = [c for c in components.values() if c in REAL_CHECKPOINTS]
    values = {
        "license": info.get("license", "apache-2.0"),
        "base_models": "base_model:\n" + "".join(f"- {m}\n" for m in base_models) if base_models else "",
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "demo_warning": info.get("warning", ""),
        "vision": components.get("vision", "Dinov2, width %d" % config["vision_config"]["hidden_size"]),
        "text_encoder": components.get("text_encoder",
                                       "BERT, width %d" % config["text_encoder_config"]["hidden_size"]),
        "llm": components.get("llm", "Llama, width %d, %d layers" % (config["text_config"]["hidden_size"],
                                                                    config["text_config"]["num_hidden_layers"])),
        "connector": config["connector"],
        "num_memory_queries": config["num_memory_queries"],
        "adapter_heads": config["adapter_num_heads"],
        "mlp_depth": config["adapter_mlp_depth"],
        "total_params": f"{total:,}" if isinstance(total, int) else "see config",
        "curriculum": info.get("curriculum", "s1,s2,s3"),
        # the section training recorded in the config (`s2d prepare --section`); a folder saved before it existed
        # was trained on FINDINGS, the only section then
        "section": config.get("section", "findings").title(),
        "section_source": f"{config.get('section', 'findings').upper()} sections",
        "metrics_table": table,
        "metrics_note": note,
        "data_note": info.get("data_note", "See the training dataset's own licence."),
    }
    text = Template(TEMPLATE.read_text()).substitute(values)  # KeyError if the template gains an unfilled field
    return text


def push(model_dir: str, repo_id: str, *, dry_run: bool = False, private: bool = False, token: str | None = None):
    """Write the model card and upload the folder. Returns the list of uploaded (or, dry run, listed) files."""
    folder = Path(model_dir)
    if "/" not in repo_id:
        raise ValueError(f"repo id {repo_id!r} must look like 'user-or-org/name'")
    check_folder(folder)
    (folder / "README.md").write_text(render_model_card(folder, repo_id))
    files = [str(p.relative_to(folder)) for p in check_folder(folder)]
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    # exact relative paths as the allow-list: only the selected files go, whatever else the folder holds
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload S2D-Align model",
                      allow_patterns=files)
    return files


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def register(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish a model folder to the Hub with remote code and card")
    parser.add_argument("--model", required=True, help="a saved S2D-Align folder (e.g. DIR/final)")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--dry-run", action="store_true", help="write the model card and list files; no upload")
    parser.add_argument("--private", action="store_true")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    files = push(args.model, args.repo_id, dry_run=args.dry_run, private=args.private)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
    return 0
