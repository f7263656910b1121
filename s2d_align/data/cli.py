"""The `s2d prepare` sub-command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..keyphrases import BACKENDS
from .references import STRATEGIES

DATASETS = ("iu_xray", "mimic_cxr", "phantom")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="build a dataset (DatasetDict on disk) with references and key phrases",
        description="Build the DatasetDict the three training stages consume, plus DIR/prepare_summary.json. "
                    "IU X-Ray and MIMIC-CXR images are not shipped: pass --image-root / --mimic-root.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, type=Path, help="output folder (DatasetDict.save_to_disk)")
    src = p.add_argument_group("sources")
    src.add_argument("--annotation", type=Path, help="R2Gen annotation.json (IU X-Ray default: the bundled one)")
    src.add_argument("--reports-tgz", type=Path, help="IU X-Ray: Open-i NLMCXR_reports.tgz (FINDINGS from the XML)")
    src.add_argument("--image-root", type=Path, help="folder the image paths resolve against")
    src.add_argument("--mimic-root", type=Path, help="MIMIC-CXR-JPG root (metadata + split CSVs, files/)")
    src.add_argument("--reports-root", type=Path, help="MIMIC-CXR report .txt root if not under --mimic-root")
    src.add_argument("--missing-images", choices=("error", "skip"), default="error",
                     help="a missing or unreadable image: stop with an error (default) or skip the sample and count it")
    src.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                     help="only check that image files exist (skip opening them with PIL)")
    src.add_argument("--anatomy-masks", type=Path, help="folder of lung + heart masks, <image file stem>.png per image "
                     "(for anatomical_bias: masks; e.g. CheXmask's for MIMIC-CXR written as PNGs)")
    src.add_argument("--clean", action="store_true", help="apply R2Gen's report cleaning (original kept in report_raw)")
    src.add_argument("--section", choices=("findings", "impression"), default="findings",
                     help="the report section the model learns to write (default findings; RRG24 trained one model "
                          "per section). Studies without it are skipped and counted; IU X-Ray impressions come from the "
                          "Open-i XML, MIMIC-CXR ones from the report files")
    model = p.add_argument_group("the model the data is for")
    model.add_argument("--model", type=Path,
                       help="S2D-Align folder (from `s2d build`): take its max_views, and count reports longer than "
                            "its max_report_tokens with its tokenizer (without it: counted in words)")
    model.add_argument("--max-views", type=int,
                       help="images kept per study, frontal first, then lateral (default: the model's, else 2, "
                            "`s2d build`'s default; MIMIC-CXR studies hold up to 4)")
    aux = p.add_argument_group("auxiliary signals")
    aux.add_argument("--reference", choices=STRATEGIES, default=None,
                     help="stage-2 reference reports (default: retrieval for iu_xray, one study per patient, which "
                          "needs --feature-model; same_patient otherwise)")
    aux.add_argument("--feature-model", type=Path, help="Dinov2 checkpoint folder for retrieval image features")
    aux.add_argument("--device", default="cpu", help="device of the feature model (default cpu)")
    aux.add_argument("--keyphrases", choices=BACKENDS + ("ground_truth",),
                     help="stage-3 key-phrase backend (default: rules; phantom: ground_truth)")
    aux.add_argument("--rewrite-model", type=Path, help="local causal LM folder for the optional key-phrase rewrite")
    aux.add_argument("--rewrite-cache", type=Path, help="rewrite cache JSON (default OUT/keyphrase_rewrite_cache.json)")
    ph = p.add_argument_group("phantom")
    ph.add_argument("--num-patients", type=int, default=200)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--image-size", type=int, default=128)
    ph.add_argument("--num-workers", type=int, default=0, help="phantom rendering processes (0 = in process)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .prepare import prepare

    options = {k: getattr(args, k) for k in (
        "annotation", "reports_tgz", "image_root", "mimic_root", "reports_root", "missing_images", "verify_images",
        "clean", "reference", "feature_model", "device", "keyphrases", "rewrite_model", "rewrite_cache",
        "num_patients", "seed", "image_size", "num_workers", "model", "max_views", "section",
        "anatomy_masks")}
    try:
        prepare(args.dataset, args.out, **options)
    except FileNotFoundError:
        raise
    except (OSError, KeyError) as err:  # a file we could not read or write: one line, not a traceback
        raise ValueError(f"{type(err).__name__}: {err}") from None
    summary = json.loads((args.out / "prepare_summary.json").read_text())
    counts = ", ".join(f"{split} {n}" for split, n in summary["counts"].items())
    print(f"prepared {args.dataset} in {args.out}: {counts}; skipped {summary['skipped']['total']}")
    for line in summary_lines(summary):
        print(line)
    return 0


def summary_lines(summary: dict) -> list[str]:
    """What a user must not miss: samples without a reference, views dropped, reports cut in training."""
    lines = []
    refs = summary.get("references") or {}
    if refs.get("no_reference"):
        lines.append(f"warning: {refs['no_reference']} of {summary['total']} samples have no stage-2 reference "
                     f"({refs.get('strategy')}: {refs.get('no_reference_reason', '')}); they get an empty one")
    views = summary.get("views")
    if views and views["views_dropped"]:
        lines.append(f"views: {views['views_dropped']} images dropped from {views['studies_cut']} studies with more "
                     f"than max_views={views['max_views']} ({views['rule']})")
    targets = summary.get("targets")
    if targets and targets["truncated"]:
        lines.append(f"targets: {targets['truncated']} reports longer than max_report_tokens="
                     f"{targets['max_report_tokens']} (counted in {targets['counted_in'].split(',')[0]}) are cut "
                     "in training, without EOS")
    return lines
