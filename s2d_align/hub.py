"""Publish a trained S2D-Align folder to the Hugging Face Hub with its remote code and a filled-in model card.

`s2d push --model DIR --repo-id NAME [--dry-run]`: checks the folder (config, safetensors weights, the three
remote-code files, the processor), renders `model_card.md` into `DIR/README.md` from the folder's
`training_info.json` (components, written by `s2d build`; datasets, added by each stage) and `eval.json` (when
present): the Hub metadata block is built by `huggingface_hub.ModelCardData` (language, licence by the rules of
`card_license`, base models, datasets, metrics, and a `model-index` holding eval.json's numbers), then uploads exactly the model files (`MODEL_FILES`: weights,
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

from modeling_s2d import memory_grid_shape

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


# Licences. The weights of a folder inherit the LLM's licence (the LLM is most of the weights; the frozen encoders
# keep their own licences, named in the card). Weights trained on MIMIC-CXR carry the PhysioNet terms instead: a
# model trained on credentialed data may not be shared outside them (PhysioNet Credentialed Health Data License
# 1.5.0, the licence of MIMIC-CXR and MIMIC-CXR-JPG 2.x).
LLM_LICENSES = {"vicuna": "llama2", "llama-2": "llama2", "llama2": "llama2", "smollm2": "apache-2.0"}
PHYSIONET = {"license": "other", "license_name": "physionet-credentialed-health-data-1.5.0",
             "license_link": "https://physionet.org/content/mimic-cxr/view-license/2.0.0/"}
UNKNOWN_LICENSE = {"license": "other", "license_name": "unknown"}
# dataset key (as `s2d prepare --dataset` names it) -> (model-index dataset type, pretty name, licence note)
DATASETS = {
    "mimic_cxr": ("mimic-cxr", "MIMIC-CXR", "MIMIC-CXR (Johnson et al., 2019; PhysioNet Credentialed Health Data "
                  "License 1.5.0): these weights were trained on credentialed data and may not be redistributed "
                  "outside the PhysioNet terms; users must hold PhysioNet credentials and sign its data use "
                  "agreement."),
    "iu_xray": ("iu-xray", "IU X-Ray", "IU X-Ray (Demner-Fushman et al., JAMIA 2016; reports CC BY-NC-ND 4.0): "
                "non-commercial use."),
    "phantom": ("s2d-align-phantom", "S2D-Align phantom chest radiographs (synthetic)",
                "Synthetic phantom radiographs generated by s2d-align (no patient data)."),
}
# eval.json table key -> (Hub metric id, name, metric args); CE names get the convention and labeler appended
METRICS = {
    "ce_micro_f1": ("f1", "CE micro-F1", None), "ce_precision": ("precision", "CE micro-precision", None),
    "ce_recall": ("recall", "CE micro-recall", None), "ce_macro_f1": ("f1", "CE macro-F1", None),
    **{f"BLEU_{n}": ("bleu", f"BLEU-{n}", {"max_order": n}) for n in range(1, 5)},
    "METEOR": ("meteor", "METEOR", None), "ROUGE_L": ("rouge", "ROUGE-L", None), "CIDEr": ("cider", "CIDEr-D", None),
}


def dataset_key(name: str | None) -> str | None:
    """`mimic_cxr`, `iu_xray` or `phantom` from a free-form dataset name ("phantom test split", "MIMIC-CXR", ...)."""
    text = (name or "").lower().replace("-", "_").replace(" ", "_")
    for key, marks in (("mimic_cxr", ("mimic",)), ("iu_xray", ("iu_xray", "iu xray", "openi", "open_i")),
                       ("phantom", ("phantom",))):
        if any(m in text for m in marks):
            return key
    return None


def card_license(llm: str | None, datasets: list[str], stated: str | None = None) -> dict:
    """The card's licence fields: PhysioNet's for MIMIC-CXR-trained weights; else the licence the folder's maker
    stated (training_info.json's "license", e.g. the demo's stand-in LLM, which derives from no checkpoint); else the
    LLM checkpoint's; else "other" named "unknown" (`s2d push` warns: check the LLM's licence and state it)."""
    if "mimic_cxr" in datasets:
        return dict(PHYSIONET)
    if stated:
        return {"license": stated}
    name = (llm or "").lower()
    for mark, license_id in LLM_LICENSES.items():
        if mark in name:
            return {"license": license_id}
    return dict(UNKNOWN_LICENSE)


def eval_results(metrics: dict | None) -> list:
    """`huggingface_hub.EvalResult`s of eval.json's table: one per number, the CE convention and labeler in each CE
    metric's name, the references in each NLG metric's name."""
    from huggingface_hub import EvalResult

    if not metrics or not metrics.get("table"):
        return []
    key = dataset_key(metrics.get("dataset"))
    dataset_type, dataset_name, _ = DATASETS[key] if key else ("unspecified", "unspecified dataset", "")
    ce = f"{metrics.get('ce_convention', 'unknown')} convention, {metrics.get('labeler', 'unknown')} labeler"
    references = metrics.get("references", "unstated references")
    results = []
    for name, value in metrics["table"].items():
        if not isinstance(value, (int, float)):
            continue
        metric_type, pretty, args = METRICS.get(name, (name.lower(), name, None))
        pretty += f" ({ce})" if name.startswith("ce_") else f" (pycocoevalcap, {references})"
        results.append(EvalResult(task_type="image-text-to-text", task_name="Radiology report generation",
                                  dataset_type=dataset_type, dataset_name=dataset_name, dataset_split="test",
                                  metric_type=metric_type, metric_name=pretty, metric_value=value,
                                  metric_args=args))
    return results


def card_metadata(model_dir: Path, repo_id: str, info: dict, metrics: dict | None):
    """The card's YAML block as `huggingface_hub.ModelCardData` (which checks the model-index as it parses it)."""
    from huggingface_hub import ModelCardData

    components = info.get("components", {})
    datasets = [k for k in (dataset_key(d) for d in info.get("datasets", [])) if k]
    evaluated = dataset_key((metrics or {}).get("dataset"))
    if evaluated and evaluated not in datasets and metrics and metrics.get("table"):
        datasets.append(evaluated)
    results = eval_results(metrics)
    return ModelCardData(
        language="en", **card_license(components.get("llm"), datasets, info.get("license")),
        library_name="transformers", pipeline_tag="image-text-to-text",
        tags=["radiology", "radiology-report-generation", "chest-x-ray", "s2d-align", "custom_code"],
        base_model=[c for c in components.values() if c in REAL_CHECKPOINTS] or None,
        datasets=[DATASETS[d][0] for d in datasets] or None,
        metrics=sorted({r.metric_type for r in results}) or None,
        # model_name only names the model-index; without results it would be a stray key in the YAML
        model_name=repo_id.split("/")[-1] if results else None, eval_results=results or None)


def _metrics_table(metrics: dict | None) -> tuple[str, str]:
    if not metrics:
        return "No evaluation results were recorded for this folder.", ""
    rows = metrics.get("table") or {}
    if not rows:  # fall back to every top-level number
        rows = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    header = "| " + " | ".join(rows) + " |\n|" + "---|" * len(rows) + "\n"
    table = header + "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in rows.values()) + " |"
    provenance = ", ".join(f"{k.replace('_', ' ')}: {metrics[k]}" for k in ("dataset", "ce_convention", "labeler",
                                                                            "references") if metrics.get(k))
    note = " ".join(x for x in (metrics.get("note", ""), f"({provenance})" if provenance else "") if x)
    return table, note


def _measured(metrics: dict | None) -> str:
    if not metrics or not metrics.get("table"):
        return "Nothing was measured for this folder: it has no eval.json."
    names = ", ".join(METRICS.get(k, (k, k, None))[1] for k in metrics["table"])
    return (f"Measured: {names} on the test split of {metrics.get('dataset', 'an unstated dataset')}, reports "
            f"generated from the images alone; CE in the {metrics.get('ce_convention', 'unstated')} convention with "
            f"the {metrics.get('labeler', 'unstated')} labeler (a rules labeler's CE is not comparable with "
            "CheXbert-based tables).")


def render_model_card(model_dir: Path, repo_id: str) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    info = _read_json(model_dir / "training_info.json") or {}
    metrics = _read_json(model_dir / "eval.json")
    total = info.get("total_parameters")
    table, note = _metrics_table(metrics)
    components = info.get("components", {})
    datasets = [k for k in (dataset_key(d) for d in info.get("datasets", [])) if k]
    data_notes = [DATASETS[d][2] for d in datasets]
    values = {
        "metadata": card_metadata(model_dir, repo_id, info, metrics).to_yaml(),
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "demo_warning": info.get("warning", ""),
        "vision": components.get("vision", "Dinov2, width %d" % config["vision_config"]["hidden_size"]),
        "text_encoder": components.get("text_encoder",
                                       "BERT, width %d" % config["text_encoder_config"]["hidden_size"]),
        "llm": components.get("llm", "Llama, width %d, %d layers" % (config["text_config"]["hidden_size"],
                                                                    config["text_config"]["num_hidden_layers"])),
        "connector": config["connector"] + (
            " (memory queries on a %d x %d grid over the patches, prior sigma %g cells: `memory_spatial_prior: grid`, "
            "ours)" % (*memory_grid_shape(config["num_memory_queries"]), config.get("memory_spatial_prior_sigma", 1.0))
            if config.get("memory_spatial_prior") == "grid" else ""),
        "num_memory_queries": config["num_memory_queries"],
        "adapter_heads": config["adapter_num_heads"],
        "mlp_depth": config["adapter_mlp_depth"],
        "anatomical_bias": (f"lung + heart masks (UDEM's layer-wise bias, scale {config.get('anatomical_bias_scale', 1.0)}): "
                            "give one mask per image, `processor(images=..., anatomy_masks=...)`"
                            if config.get("anatomical_bias") == "masks" else "none"),
        "total_params": f"{total:,}" if isinstance(total, int) else "see config",
        "curriculum": info.get("curriculum", "s1,s2,s3"),
        # the section training recorded in the config (`s2d prepare --section`); a folder saved before it existed
        # was trained on FINDINGS, the only section then
        "section": config.get("section", "findings").title(),
        "section_source": f"{config.get('section', 'findings').upper()} sections",
        "metrics_table": table,
        "metrics_note": note,
        "measured": _measured(metrics),
        "data_note": " ".join(data_notes + [info["data_note"]] if info.get("data_note") else data_notes)
        or "See the training dataset's own licence.",
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
    from huggingface_hub import ModelCard

    if ModelCard.load(Path(args.model) / "README.md").data.get("license_name") == UNKNOWN_LICENSE["license_name"]:
        print(f"warning: the licence of {args.model} is unknown (its LLM is none of {sorted(LLM_LICENSES)} and "
              "training_info.json states no \"license\"); the card says license: other / unknown")
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
    return 0
