"""S2D-Align report-generation metrics as a Hugging Face ``evaluate`` module (loads offline).

    import evaluate
    from s2d_align.metrics import evaluate_module_path
    metric = evaluate.load(evaluate_module_path())
    metric.compute(predictions=[...], references=[...], ce_convention="llmrg4")

The computation is ``s2d_align.metrics.evaluate_reports`` (this file only adapts it), so the numbers
are the ones ``s2d eval`` writes.
"""

import datasets
import evaluate

from s2d_align.metrics import evaluate_reports

_DESCRIPTION = """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap scorers, R2Gen-cleaned text,
references never truncated) and CheXpert clinical efficacy P/R/F1 under the r2gen, llmrg4 or
example convention, with the rules (offline) or chexbert labeler; RadGraph F1 when available."""
_CITATION = """@article{s2dalign2025, title={S2D-Align}, journal={arXiv:2511.11066}, year={2025}}"""
_KWARGS = """predictions: list of generated reports. references: list of reference reports (same order).
ce_convention: "r2gen" | "llmrg4" (default) | "example". labeler: "rules" (default) | "chexbert".
references_kind: "raw" (default) | "cleaned". clean: "iu_xray" | "mimic_cxr" | "none" (R2Gen's cleaner of the
references' dataset; not given: "iu_xray" with a warning). meteor: bool (needs Java). radgraph: bool.
bootstrap: resamples of studies for the 95% intervals in details["intervals"] (0: none); seed."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class S2DMetrics(evaluate.Metric):
    """NLG + CE metrics of radiology reports."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, ce_convention="llmrg4", labeler="rules",
                 references_kind="raw", clean=None, meteor=True, radgraph=True, bootstrap=1000, seed=0):
        ids = [f"{i:08d}" for i in range(len(predictions))]
        result = evaluate_reports(dict(zip(ids, predictions)), dict(zip(ids, references)),
                                  convention=ce_convention, labeler=labeler,
                                  references_kind=references_kind, clean=clean, meteor=meteor,
                                  radgraph=radgraph, bootstrap=bootstrap, seed=seed)
        flat = {k: v for k, v in result["nlg"].items()}
        ce = result["ce"]
        flat.update(ce_precision=ce["precision"], ce_recall=ce["recall"], ce_f1=ce["f1"])
        flat.update({f"radgraph_{k}": v for k, v in result["radgraph"].items()})
        flat.update(ce_convention=ce_convention, labeler=labeler, references=references_kind)
        flat["details"] = result
        return flat
