"""``s2d label`` and ``s2d eval``: registered on the main ``s2d`` parser by ``register``."""

from __future__ import annotations

import argparse
import sys

from ..labeler import LABELERS, OBSERVATIONS, label_reports
from .ce import CONVENTIONS
from .evaluate import REFERENCE_KINDS
from .text import CLEANERS
from .uncertainty import N_RESAMPLES, SEED


def register(subparsers) -> None:
    """Add the ``label`` and ``eval`` sub-commands."""
    label = subparsers.add_parser("label", help="CheXpert labels (14 observations) of each report")
    label.add_argument("--reports", required=True, help='JSONL, one {"id": ..., "report": ...} per line')
    label.add_argument("--out", required=True, help="output JSONL: id, labeler and the 14 labels (1, 0, -1, null)")
    label.add_argument("--labeler", choices=LABELERS, default="rules")
    label.set_defaults(func=run_label)

    ev = subparsers.add_parser("eval", help="NLG + clinical-efficacy metrics of predictions vs references",
                               description="Scores with bootstrap 95%% intervals; --compare A B tests two systems "
                                           "on the same references (paired permutation test).")
    ev.add_argument("--predictions", help='JSONL {"id", "report"} of generated reports')
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"),
                    help="two prediction JSONL files on the same references: paired test of B against A")
    ev.add_argument("--references", required=True,
                    help='JSONL {"id", "report"[, "dataset"]} of ground-truth reports, or a prepared dataset '
                         "folder (s2d prepare --out DIR; see --split)")
    ev.add_argument("--split", default="test", help="split of a prepared dataset folder (default test)")
    ev.add_argument("--out", required=True, help="output folder: metrics.json, metrics.md, plot, labels.jsonl")
    ev.add_argument("--ce-convention", choices=CONVENTIONS, default="llmrg4",
                    help="r2gen: uncertain->0, micro; llmrg4 (S2D-Align Table 1): uncertain->1, micro; "
                         "example: PromptMRG example-based")
    ev.add_argument("--labeler", choices=LABELERS, default="rules")
    ev.add_argument("--references-kind", choices=REFERENCE_KINDS, default="raw",
                    help="what the reference file holds: raw report text or R2Gen-cleaned text")
    ev.add_argument("--clean", choices=CLEANERS, default=None,
                    help="R2Gen text cleaning of both sides before NLG scoring; inferred from the references' "
                         "dataset when it is recorded, required otherwise")
    ev.add_argument("--bootstrap", type=int, default=N_RESAMPLES,
                    help="resamples of studies for the 95%% intervals (and permutation trials of --compare); 0: none")
    ev.add_argument("--seed", type=int, default=SEED, help="seed of the resampling")
    ev.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    ev.add_argument("--no-radgraph", action="store_true", help="skip RadGraph F1")
    ev.add_argument("--phantom", metavar="DATASET_DIR",
                    help="a phantom dataset (s2d prepare --dataset phantom / s2d demo's data/): also score where each "
                         "finding is (side, level, size, device kind) against its truth -> attributes in metrics.json")
    ev.set_defaults(func=run_eval)


def _labels_or_exit(texts, labeler, desc):
    try:
        return label_reports(texts, labeler, progress=True, desc=desc)
    except RuntimeError as err:  # backend unavailable (missing package or weights): say why
        raise ValueError(str(err)) from None


def run_label(args: argparse.Namespace) -> int:
    from .jsonl import read_reports, write_jsonl

    reports = read_reports(args.reports, allow_empty=True)
    labels = _labels_or_exit(list(reports.values()), args.labeler, "labelling")
    write_jsonl(args.out, ({"id": rid, "labeler": args.labeler, **{o: lab[o] for o in OBSERVATIONS}}
                           for rid, lab in zip(reports, labels)))
    print(f"labelled {len(reports)} reports with the {args.labeler} labeler -> {args.out}")
    return 0


def _references(args):
    from .jsonl import read_reports
    from .provenance import References, is_prepared_dataset, jsonl_dataset, load_prepared_references

    if is_prepared_dataset(args.references):
        refs = load_prepared_references(args.references, args.split)
    else:
        refs = References(read_reports(args.references), jsonl_dataset(args.references), args.references_kind,
                          str(args.references))
    return refs


def _predictions(path, refs):
    from .jsonl import match_ids, read_reports

    preds = read_reports(path, allow_empty=True)
    match_ids(preds, refs.reports)
    for rid in preds:
        if not preds[rid].strip():
            print(f"warning: {preds.where(rid)}: empty prediction, scored as empty text", file=sys.stderr)
    return preds


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import evaluate_reports
    from .jsonl import write_jsonl
    from .provenance import resolve_cleaning
    from .report import provenance_line, write_outputs

    if (args.predictions is None) == (args.compare is None):
        raise ValueError("give either --predictions FILE or --compare A B")
    refs = _references(args)
    clean, clean_source = resolve_cleaning(args.clean, refs.dataset, refs.source)
    if args.compare:
        return _run_compare(args, refs, clean, clean_source)
    preds = _predictions(args.predictions, refs)
    try:
        result = evaluate_reports(dict(preds), dict(refs.reports), convention=args.ce_convention,
                                  labeler=args.labeler, references_kind=refs.kind,
                                  clean=clean, clean_source=clean_source, meteor=not args.no_meteor,
                                  radgraph=not args.no_radgraph, progress=True, return_labels=True,
                                  bootstrap=args.bootstrap, seed=args.seed)
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    result["settings"]["references_source"] = refs.source
    if refs.notes:
        result["settings"]["references_notes"] = refs.notes
    labels = result.pop("labels")
    if args.phantom:
        result["phantom_attributes"] = _phantom_attributes(dict(preds), args.phantom)
    paths = write_outputs(result, args.out)
    write_jsonl(Path(args.out) / "labels.jsonl",
                ({"id": rid, "labeler": args.labeler, "prediction": labels["predictions"][rid],
                  "reference": labels["references"][rid]} for rid in sorted(preds)))
    nlg, ce = result["nlg"], result["ce"]
    print(provenance_line(result))
    print(f"B@4 {nlg['BLEU_4']:.4f}  MTR {nlg['METEOR'] if nlg['METEOR'] is None else round(nlg['METEOR'], 4)}  "
          f"RG-L {nlg['ROUGE_L']:.4f}  CE P {ce['precision']:.4f} R {ce['recall']:.4f} F1 {ce['f1']:.4f}")
    if args.phantom:
        from .phantom_attributes import attribute_table

        table = attribute_table({"predictions": result["phantom_attributes"]})
        (Path(args.out) / "phantom_attributes.md").write_text(table)
        print(table)
    print(f"wrote {paths['json']}, {paths['md']}, {paths['plot']}")
    return 0


def _phantom_attributes(predictions: dict, dataset_dir: str) -> dict:
    """Attribute accuracy of `predictions` against the `findings` column of a phantom dataset (any split)."""
    from datasets import load_from_disk

    from .phantom_attributes import attribute_accuracy

    try:
        dsd = load_from_disk(dataset_dir)
    except FileNotFoundError:
        raise ValueError(f"--phantom {dataset_dir}: not a saved dataset (s2d prepare --dataset phantom writes one)")
    truth = {i: f for split in dsd.values() if "findings" in split.column_names
             for i, f in zip(split["id"], split["findings"]) if i in predictions}
    if not truth:
        raise ValueError(f"--phantom {dataset_dir}: no study of the predictions is in it (or it has no findings column)")
    if len(truth) < len(predictions):
        missing = next(i for i in predictions if i not in truth)
        raise ValueError(f"--phantom {dataset_dir}: {len(predictions) - len(truth)} predicted studies are not in it, "
                         f"e.g. {missing!r}")
    return attribute_accuracy(predictions, truth)


def _run_compare(args, refs, clean: str, clean_source: str) -> int:
    import json
    from pathlib import Path

    from .evaluate import system_stats
    from .nlg import meteor_unavailable_reason
    from .report import comparison_markdown
    from .uncertainty import compare_systems

    preds_a, preds_b = (_predictions(path, refs) for path in args.compare)
    meteor = not args.no_meteor and meteor_unavailable_reason() is None
    common = dict(convention=args.ce_convention, labeler=args.labeler, clean=clean, meteor=meteor)
    try:
        _, nlg_a, ce_a = system_stats(dict(preds_a), dict(refs.reports), **common)
        _, nlg_b, ce_b = system_stats(dict(preds_b), dict(refs.reports), **common)
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    comparison = compare_systems(nlg_a, nlg_b, ce_a, ce_b, len(refs.reports), trials=args.bootstrap or N_RESAMPLES,
                                 seed=args.seed)
    result = {"settings": {"ce_convention": args.ce_convention, "labeler": args.labeler, "text_cleaning": clean,
                           "text_cleaning_source": clean_source, "meteor": meteor},
              "systems": {"A": str(args.compare[0]), "B": str(args.compare[1]), "references": refs.source},
              "n_reports": len(refs.reports), "comparison": comparison}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "comparison.md").write_text(comparison_markdown(result), encoding="utf-8")
    for key, row in comparison["metrics"].items():
        print(f"{key:14s} A {row['A']:.4f}  B {row['B']:.4f}  B-A {row['difference']:+.4f}  p {row['p_value']:.4f}")
    print(f"wrote {out / 'comparison.json'}, {out / 'comparison.md'}")
    return 0
