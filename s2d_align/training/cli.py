"""`s2d demo`: the main job on the embedded phantom default (see `s2d_align.training.demo`)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="phantom data -> stages 1, 2, 3 on a tiny model -> generate -> eval")
    parser.add_argument("--out", required=True, help="output folder (final/, predictions.jsonl, eval.json, ...)")
    parser.add_argument("--num-patients", type=int, help="phantom patients (default 1200)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the image-blind baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from .demo import DemoConfig, run_demo

    config = DemoConfig(seed=args.seed, baseline=not args.no_baseline)
    if args.num_patients:
        config.num_patients = args.num_patients
    summary = run_demo(args.out, config)
    print(open(f"{args.out}/eval.md").read())
    print(json.dumps({"seconds": summary["seconds"], "final": f"{args.out}/final"}, indent=1))
    return 0
