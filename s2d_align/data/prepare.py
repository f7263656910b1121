"""`s2d prepare`: load a dataset, attach key phrases and stage-2 references, save, summarise.

Output: `DatasetDict.save_to_disk(out_dir)` plus `out_dir/prepare_summary.json` (counts per split,
skipped samples by reason, reference statistics, the view rule and the views it dropped, reports longer than
the model's `max_report_tokens`, and every option used).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict
from tqdm.auto import tqdm

from ..keyphrases import BACKENDS, extract_key_phrases
from .iu_xray import load_iu_xray
from .mimic_cxr import load_mimic_cxr
from .phantom import generate_phantom
from .references import STRATEGIES, attach_references
from .summary import SkipLog, write_summary
from .text import SECTIONS
from .views import DEFAULT_MAX_VIEWS, ViewLog

DATASETS = ("iu_xray", "mimic_cxr", "phantom")
DEFAULTS = {
    "annotation": None, "reports_tgz": None, "image_root": None, "mimic_root": None, "reports_root": None,
    "reference": None, "keyphrases": None, "clean": False, "missing_images": "error",
    "verify_images": True, "feature_model": None, "features": None, "device": "cpu",
    "rewrite_model": None, "rewrite_cache": None, "num_patients": 200, "seed": 0, "image_size": 128,
    "num_workers": 0, "max_views": None, "model": None, "section": "findings", "anatomy_masks": None,
}
# IU X-Ray has one study per patient: `same_patient` would give every sample an empty reference.
DEFAULT_REFERENCE = {"iu_xray": "retrieval", "mimic_cxr": "same_patient", "phantom": "same_patient"}
# Without a model folder, report lengths are counted in words (`_target_lengths`).
DEFAULT_MAX_REPORT_TOKENS = 256


def prepare(dataset: str, out_dir, **options) -> DatasetDict:
    """Build the `DatasetDict` of `dataset` ("iu_xray", "mimic_cxr" or "phantom") into `out_dir`.

    Options (all keyword): annotation, reports_tgz, image_root, mimic_root, reports_root; reference
    ("same_patient" | "retrieval" | "none"; default retrieval for IU X-Ray, whose patients have one study each,
    else same_patient); model (an S2D-Align folder: its `max_views`, tokenizer and `max_report_tokens`);
    max_views (default: the model's, else `s2d build`'s default 2); keyphrases ("rules" | "radgraph"; phantom default
    "ground_truth"); clean (R2Gen cleaning); missing_images ("error" | "skip"); verify_images;
    feature_model (Dinov2 folder for retrieval features) or features (dict id -> vector, or a callable
    on image paths); rewrite_model / rewrite_cache (optional LLM rewrite of key phrases);
    num_patients, seed, image_size, num_workers (phantom); section ("findings" | "impression": the report section
    that becomes the target; studies without it are skipped and counted; recorded in prepare_summary.json, from
    where training copies it into the model's config); anatomy_masks (a folder of lung + heart masks, one
    `<image file stem>.png` per image: the `anatomy_mask_paths` column that `anatomical_bias: masks` reads; see
    `s2d_align.data.anatomy_masks`; the phantom writes its own).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown prepare option {unknown[0]!r}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    opts["reference"] = opts["reference"] or DEFAULT_REFERENCE.get(dataset, "same_patient")
    _check_choices(dataset, opts)
    if dataset == "phantom":
        if opts["section"] != "findings":
            raise ValueError("the phantom set writes a FINDINGS section only; section 'impression' needs iu_xray or "
                             "mimic_cxr")
        return generate_phantom(out_dir, opts["num_patients"], seed=opts["seed"], image_size=opts["image_size"],
                                num_workers=opts["num_workers"], reference=opts["reference"],
                                keyphrases=opts["keyphrases"] or "ground_truth", features=_features(opts))
    skipped = SkipLog()
    processor = _processor(opts["model"])
    views = ViewLog(opts["max_views"] or (processor.max_views if processor is not None else DEFAULT_MAX_VIEWS))
    dsd = _load(dataset, opts, skipped, views)
    if sum(len(ds) for ds in dsd.values()) == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.counts.items()) or "the input has no entries"
        raise ValueError(f"{dataset}: no usable samples ({reasons})")
    sections: dict = {}
    if opts["anatomy_masks"]:
        from .anatomy_masks import attach_anatomy_masks

        dsd, sections["anatomy_masks"] = attach_anatomy_masks(dsd, opts["anatomy_masks"], opts["missing_images"],
                                                              skipped)
    backend = opts["keyphrases"] or "rules"
    dsd = attach_key_phrases(dsd, backend)
    if opts["rewrite_model"]:
        dsd, sections["keyphrase_rewrite"] = _rewrite(dsd, opts, out_dir)
    ref_stats: dict = {}
    dsd = attach_references(dsd, opts["reference"], features=_features(opts), stats=ref_stats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dsd.save_to_disk(str(out))
    sections["views"] = views.summary([i for ds in dsd.values() for i in ds["id"]])
    sections["targets"] = _target_lengths(dsd, processor)
    write_summary(out, dsd, _recorded_options(dataset, opts, backend), skipped, references=ref_stats, **sections)
    return dsd


def _check_choices(dataset: str, opts: dict) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if opts["section"] not in SECTIONS:
        raise ValueError(f"unknown report section {opts['section']!r}; choose one of {', '.join(SECTIONS)}")
    if opts["reference"] not in STRATEGIES:
        raise ValueError(f"unknown reference strategy {opts['reference']!r}; choose one of {', '.join(STRATEGIES)}")
    allowed = BACKENDS + (("ground_truth",) if dataset == "phantom" else ())
    if opts["keyphrases"] is not None and opts["keyphrases"] not in allowed:
        raise ValueError(f"unknown key-phrase backend {opts['keyphrases']!r}; choose one of {', '.join(allowed)}")
    if dataset != "phantom" and opts["reference"] == "retrieval" and not (opts["feature_model"] or opts["features"]):
        if dataset == "iu_xray":
            raise ValueError("IU X-Ray has one study per patient, so its references come from retrieval by default, "
                             "which needs image features: pass --feature-model PATH (a Dinov2 checkpoint folder, "
                             "e.g. Rad-DINO), or --reference none to train stage 2 without references")
        raise ValueError("reference strategy 'retrieval' needs image features: pass --feature-model PATH "
                         "(a Dinov2 checkpoint folder)")


def _processor(model):
    """The S2D-Align processor of a model folder (for its max_views, tokenizer and max_report_tokens), or None."""
    if model is None:
        return None
    from processing_s2d import S2DAlignProcessor

    folder = Path(model)
    if not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an S2D-Align model folder (no processor_config.json); pass the "
                                "folder that `s2d build` wrote")
    return S2DAlignProcessor.from_pretrained(folder)


def _target_lengths(dsd: DatasetDict, processor) -> dict:
    """Reports longer than `max_report_tokens` per split: training cuts them (and gives them no EOS)."""
    if processor is not None:
        by_split = {split: processor.report_truncation(ds["report"]) for split, ds in dsd.items()}
        unit = "LLM tokens (the model folder's tokenizer)"
    else:  # every whitespace-separated word is at least one LLM token, so the word count is a lower bound
        limit = DEFAULT_MAX_REPORT_TOKENS
        by_split = {}
        for split, ds in dsd.items():
            words = [len(r.split()) for r in ds["report"]]
            by_split[split] = {"reports": len(words), "truncated": sum(n > limit for n in words),
                               "longest_words": max(words, default=0), "max_report_tokens": limit}
        unit = ("words, a lower bound of the LLM tokens (a word is at least one token); pass --model DIR for the "
                "model's exact token counts")
    limit = next(iter(by_split.values()))["max_report_tokens"] if by_split else DEFAULT_MAX_REPORT_TOKENS
    return {"max_report_tokens": limit, "counted_in": unit,
            "truncated": sum(s["truncated"] for s in by_split.values()),
            "note": "a report longer than max_report_tokens is cut there in training and gets no EOS",
            "by_split": by_split}


def _load(dataset: str, opts: dict, skipped: SkipLog, views: ViewLog) -> DatasetDict:
    common = dict(clean=opts["clean"], missing_images=opts["missing_images"], verify_images=opts["verify_images"],
                  skipped=skipped, views=views, section=opts["section"])
    if dataset == "iu_xray":
        return load_iu_xray(opts["annotation"], opts["reports_tgz"], opts["image_root"], seed=opts["seed"], **common)
    return load_mimic_cxr(opts["annotation"], opts["mimic_root"], opts["image_root"],
                          reports_root=opts["reports_root"], **common)


def attach_key_phrases(dsd: DatasetDict, backend: str = "rules") -> DatasetDict:
    """Fill `key_phrases` of every split from the (uncleaned) report text."""
    out = {}
    for split, ds in dsd.items():
        source = ds["report_raw"] if "report_raw" in ds.column_names else ds["report"]
        phrases = [extract_key_phrases(text, backend=backend)
                   for text in tqdm(source, desc=f"key phrases ({split})", disable=len(source) < 2000)]
        out[split] = ds.remove_columns("key_phrases").add_column("key_phrases", phrases)
    return DatasetDict(out)


def _rewrite(dsd: DatasetDict, opts: dict, out_dir) -> tuple[DatasetDict, dict]:
    """Optional LLM rewrite; a sample whose rewrite came back empty keeps its extracted phrases."""
    from ..keyphrases.llm_rewrite import KeyPhraseRewriter

    cache = opts["rewrite_cache"] or Path(out_dir) / "keyphrase_rewrite_cache.json"
    stats = {"model": str(opts["rewrite_model"]), "cache": str(cache), "kept_original": 0}
    out = {}
    with KeyPhraseRewriter(opts["rewrite_model"], cache) as rewriter:
        for split, ds in dsd.items():
            new = []
            for phrases in tqdm(ds["key_phrases"], desc=f"rewriting key phrases ({split})"):
                rewritten = rewriter.rewrite(phrases)
                stats["kept_original"] += bool(phrases) and not rewritten
                new.append(rewritten or phrases)
            out[split] = ds.remove_columns("key_phrases").add_column("key_phrases", new)
        stats["generated"] = rewriter.generations
    return DatasetDict(out), stats


def _features(opts: dict):
    if opts["features"] is not None:
        return opts["features"]
    if opts["feature_model"]:
        from .features import load_feature_encoder

        return load_feature_encoder(opts["feature_model"], device=opts["device"])
    return None


def _recorded_options(dataset: str, opts: dict, backend: str) -> dict:
    keep = ("annotation", "reports_tgz", "image_root", "mimic_root", "reports_root", "reference", "clean",
            "missing_images", "verify_images", "feature_model", "rewrite_model", "seed", "model", "max_views", "section")
    recorded = {"dataset": dataset, "keyphrases": backend,
                **{k: (str(opts[k]) if isinstance(opts[k], Path) else opts[k]) for k in keep}}
    if dataset == "iu_xray" and opts["annotation"] is None and opts["reports_tgz"] is None:
        from .iu_xray import BUNDLED_ANNOTATION

        recorded["annotation"] = f"{BUNDLED_ANNOTATION} (bundled R2Gen split)"
    # s2d eval labels (and scores through R2Gen's cleaner of `dataset`) report_raw when it exists
    recorded["report_text"] = ("cleaned (R2Gen clean_report_*); original in report_raw, which is what gets labelled"
                               if opts["clean"] else f"raw {opts['section'].upper()}")
    if opts["features"] is not None:
        recorded["features"] = "given by the caller"
    return recorded


def dataset_section(dataset_path) -> str:
    """The report section a prepared dataset holds, as its `prepare_summary.json` records it; "findings" for a
    dataset prepared before sections were recorded, the phantom set, or one without a summary (FINDINGS was the
    only section then)."""
    summary = Path(dataset_path) / "prepare_summary.json"
    if not summary.is_file():
        return "findings"
    try:
        section = json.loads(summary.read_text(encoding="utf-8")).get("options", {}).get("section") or "findings"
    except json.JSONDecodeError as err:
        raise ValueError(f"{summary}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if section not in SECTIONS:
        raise ValueError(f"{summary}: unknown report section {section!r} (expected one of {', '.join(SECTIONS)})")
    return section
