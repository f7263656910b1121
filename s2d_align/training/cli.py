"""`s2d demo` (the main job on the embedded phantom default, see `s2d_align.training.demo`) and `s2d cache`
(list or delete a dataset's frozen-feature caches, see `s2d_align.training.features`)."""

from __future__ import annotations

import json
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="phantom data -> stages 1, 2, 3 on a tiny model -> generate -> eval")
    parser.add_argument("--out", required=True, help="output folder (final/, predictions.jsonl, eval.json, ...)")
    parser.add_argument("--num-patients", type=int, help="phantom patients (default 1200)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the image-blind baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-standins", action="store_true",
                        help="pretrain the stand-in encoder and LLM here instead of using the committed ones "
                             "(s2d_align/resources/demo_standins); the run writes a new bundle to OUT/standins_bundle")
    parser.set_defaults(func=_run)

    cache = subparsers.add_parser("cache", help="list or delete the frozen-feature caches of a prepared dataset")
    cache.add_argument("action", choices=("list", "clean"))
    cache.add_argument("dataset", help="the dataset folder (s2d prepare --out); caches are in DATASET/feature_cache")
    which = cache.add_mutually_exclusive_group()
    which.add_argument("--key", action="append", help="clean: this cache only (repeatable)")
    which.add_argument("--keep-model", help="clean: keep the cache of this model folder's encoders, delete the rest")
    which.add_argument("--all", action="store_true", help="clean: delete every cache of the dataset")
    cache.set_defaults(func=_cache)


def _run(args) -> int:
    from .demo import DemoConfig, run_demo

    config = DemoConfig(seed=args.seed, baseline=not args.no_baseline,
                        standins="pretrain" if args.pretrain_standins else "bundled")
    if args.num_patients:
        config.num_patients = args.num_patients
    summary = run_demo(args.out, config)
    print(open(f"{args.out}/eval.md").read())
    print(json.dumps({"seconds": summary["seconds"], "final": f"{args.out}/final"}, indent=1))
    return 0


def _cache(args) -> int:
    from .features import list_caches, remove_caches

    if args.action == "list":
        caches = list_caches(args.dataset)
        if not caches:
            print(f"{args.dataset}: no feature caches")
        for c in caches:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["modified"]))
            print(f"{c['key']}  {c['bytes'] / 1e9:9.3f} GB  {c['shards']:6d} shards  {stamp}  dtype={c['dtype']}  "
                  f"encoders={str(c['encoder_weights_sha256'])[:12]}")
        print(f"total {sum(c['bytes'] for c in caches) / 1e9:.3f} GB")
        return 0
    if not (args.key or args.keep_model or args.all):
        raise ValueError("s2d cache clean needs --key KEY, --keep-model MODEL_DIR or --all")
    removed = remove_caches(args.dataset, keys=args.key, keep_model=args.keep_model)
    for c in removed:
        print(f"deleted {c['path']} ({c['bytes'] / 1e9:.3f} GB)")
    print(f"deleted {len(removed)} cache(s), {sum(c['bytes'] for c in removed) / 1e9:.3f} GB")
    return 0
