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
    src.add_argument("--clean", action="store_true", help="apply R2Gen's report cleaning (original kept in report_raw)")
    aux = p.add_argument_group("auxiliary signals")
    aux.add_argument("--reference", choices=STRATEGIES, default="same_patient", help="stage-2 reference reports")
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
        "num_patients", "seed", "image_size", "num_workers")}
    try:
        prepare(args.dataset, args.out, **options)
    except FileNotFoundError:
        raise
    except (OSError, KeyError) as err:  # a file we could not read or write: one line, not a traceback
        raise ValueError(f"{type(err).__name__}: {err}") from None
    summary = json.loads((args.out / "prepare_summary.json").read_text())
    counts = ", ".join(f"{split} {n}" for split, n in summary["counts"].items())
    print(f"prepared {args.dataset} in {args.out}: {counts}; skipped {summary['skipped']['total']}")
    return 0
