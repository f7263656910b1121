"""`s2d prepare`: load a dataset, attach key phrases and stage-2 references, save, summarise.

Output: `DatasetDict.save_to_disk(out_dir)` plus `out_dir/prepare_summary.json` (counts per split,
skipped samples by reason, reference statistics, and every option used).
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict
from tqdm.auto import tqdm

from ..keyphrases import BACKENDS, extract_key_phrases
from .iu_xray import load_iu_xray
from .mimic_cxr import load_mimic_cxr
from .phantom import generate_phantom
from .references import STRATEGIES, attach_references
from .summary import SkipLog, write_summary

DATASETS = ("iu_xray", "mimic_cxr", "phantom")
DEFAULTS = {
    "annotation": None, "reports_tgz": None, "image_root": None, "mimic_root": None, "reports_root": None,
    "reference": "same_patient", "keyphrases": None, "clean": False, "missing_images": "error",
    "verify_images": True, "feature_model": None, "features": None, "device": "cpu",
    "rewrite_model": None, "rewrite_cache": None, "num_patients": 200, "seed": 0, "image_size": 128,
    "num_workers": 0,
}


def prepare(dataset: str, out_dir, **options) -> DatasetDict:
    """Build the `DatasetDict` of `dataset` ("iu_xray", "mimic_cxr" or "phantom") into `out_dir`.

    Options (all keyword): annotation, reports_tgz, image_root, mimic_root, reports_root; reference
    ("same_patient" | "retrieval" | "none"); keyphrases ("rules" | "radgraph"; phantom default
    "ground_truth"); clean (R2Gen cleaning); missing_images ("error" | "skip"); verify_images;
    feature_model (Dinov2 folder for retrieval features) or features (dict id -> vector, or a callable
    on image paths); rewrite_model / rewrite_cache (optional LLM rewrite of key phrases);
    num_patients, seed, image_size, num_workers (phantom).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown prepare option {unknown[0]!r}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    _check_choices(dataset, opts)
    if dataset == "phantom":
        return generate_phantom(out_dir, opts["num_patients"], seed=opts["seed"], image_size=opts["image_size"],
                                num_workers=opts["num_workers"], reference=opts["reference"],
                                keyphrases=opts["keyphrases"] or "ground_truth", features=_features(opts))
    skipped = SkipLog()
    dsd = _load(dataset, opts, skipped)
    if sum(len(ds) for ds in dsd.values()) == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.counts.items()) or "the input has no entries"
        raise ValueError(f"{dataset}: no usable samples ({reasons})")
    backend = opts["keyphrases"] or "rules"
    dsd = attach_key_phrases(dsd, backend)
    sections: dict = {}
    if opts["rewrite_model"]:
        dsd, sections["keyphrase_rewrite"] = _rewrite(dsd, opts, out_dir)
    ref_stats: dict = {}
    dsd = attach_references(dsd, opts["reference"], features=_features(opts), stats=ref_stats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dsd.save_to_disk(str(out))
    write_summary(out, dsd, _recorded_options(dataset, opts, backend), skipped, references=ref_stats, **sections)
    return dsd


def _check_choices(dataset: str, opts: dict) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if opts["reference"] not in STRATEGIES:
        raise ValueError(f"unknown reference strategy {opts['reference']!r}; choose one of {', '.join(STRATEGIES)}")
    allowed = BACKENDS + (("ground_truth",) if dataset == "phantom" else ())
    if opts["keyphrases"] is not None and opts["keyphrases"] not in allowed:
        raise ValueError(f"unknown key-phrase backend {opts['keyphrases']!r}; choose one of {', '.join(allowed)}")
    if dataset != "phantom" and opts["reference"] == "retrieval" and not (opts["feature_model"] or opts["features"]):
        raise ValueError("reference strategy 'retrieval' needs image features: pass --feature-model PATH "
                         "(a Dinov2 checkpoint folder)")


def _load(dataset: str, opts: dict, skipped: SkipLog) -> DatasetDict:
    common = dict(clean=opts["clean"], missing_images=opts["missing_images"], verify_images=opts["verify_images"],
                  skipped=skipped)
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
            "missing_images", "verify_images", "feature_model", "rewrite_model", "seed")
    recorded = {"dataset": dataset, "keyphrases": backend,
                **{k: (str(opts[k]) if isinstance(opts[k], Path) else opts[k]) for k in keep}}
    if dataset == "iu_xray" and opts["annotation"] is None and opts["reports_tgz"] is None:
        from .iu_xray import BUNDLED_ANNOTATION

        recorded["annotation"] = f"{BUNDLED_ANNOTATION} (bundled R2Gen split)"
    # s2d eval labels (and scores through R2Gen's cleaner of `dataset`) report_raw when it exists
    recorded["report_text"] = ("cleaned (R2Gen clean_report_*); original in report_raw, which is what gets labelled"
                               if opts["clean"] else "raw FINDINGS")
    if opts["features"] is not None:
        recorded["features"] = "given by the caller"
    return recorded
