"""NLG metrics with the pycocoevalcap scorers themselves, called the way R2Gen calls them.

R2Gen's ``compute_scores(gts, res)`` runs ``Bleu(4)``, ``Meteor()``, ``Rouge()`` on
``{id: [reference]}`` / ``{id: [prediction]}`` with no PTBTokenizer; we add ``Cider()`` (pycocoevalcap's
``Cider`` is CIDEr-D: clipped n-gram counts, Gaussian length penalty, sigma 6). BLEU is corpus
level ("closest" reference length), ROUGE-L is per report (beta 1.2) averaged, CIDEr-D takes its
document frequencies from the references given.
"""

from __future__ import annotations

import shutil
import threading
from typing import Any

from .text import normalize

NLG_KEYS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
_METEOR_LOCK = threading.Lock()
_METEOR: Any = None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot run here (its scorer is a Java program), or None when it can."""
    if shutil.which("java") is None:
        return "METEOR unavailable: `java` not found on PATH (pycocoevalcap's METEOR 1.5 is a Java jar; install a JRE, e.g. apt-get install default-jre-headless)"
    return None


def _meteor_scorer():
    """One METEOR JVM per process: starting it takes seconds, and it serves every call after."""
    global _METEOR
    with _METEOR_LOCK:
        if _METEOR is None:
            from pycocoevalcap.meteor.meteor import Meteor

            _METEOR = Meteor()
        return _METEOR


def check_same_ids(predictions: dict[str, str], references: dict[str, str]) -> None:
    """Scores are only comparable on the full, identical id set: refuse anything else."""
    missing = [i for i in predictions if i not in references]
    extra = [i for i in references if i not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} prediction id(s) have no reference, e.g. {missing[:3]}")
    if extra:
        raise ValueError(f"{len(extra)} reference id(s) have no prediction, e.g. {extra[:3]}")
    if not predictions:
        raise ValueError("no reports to score")


def scorer_inputs(predictions: dict[str, str], references: dict[str, str], clean: str
                  ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(gts, res)`` in pycocoevalcap's format, on normalized text, in one fixed id order."""
    ids = sorted(predictions)
    gts = {i: [normalize(references[i], clean)] for i in ids}
    res = {i: [normalize(predictions[i], clean)] for i in ids}
    return gts, res


def meteor_score_and_stats(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[str]]:
    """pycocoevalcap's ``Meteor.compute_score`` (one ``SCORE`` line per study, then ``EVAL`` over
    all of them, in ``gts`` order), also returning each study's statistics line for the bootstrap."""
    scorer = _meteor_scorer()
    with scorer.lock:
        stats = [scorer._stat(res[i][0], gts[i]) for i in gts]
        scorer.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        scorer.meteor_p.stdin.flush()
        for _ in stats:  # per-study scores: not needed
            scorer.meteor_p.stdout.readline()
        score = float(scorer.meteor_p.stdout.readline().strip())
    return score, stats


def compute_nlg(predictions: dict[str, str], references: dict[str, str], *, clean: str = "iu_xray",
                meteor: bool = True) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D of ``predictions`` against ``references`` (same ids).

    ``clean``: R2Gen cleaning applied to both sides ("iu_xray", "mimic_cxr", or "none").
    METEOR is None (with ``meteor_status`` saying why) when Java is missing or ``meteor=False``.
    """
    return compute_nlg_with_stats(predictions, references, clean=clean, meteor=meteor)[0]


def compute_nlg_with_stats(predictions: dict[str, str], references: dict[str, str], *, clean: str = "iu_xray",
                           meteor: bool = True):
    """``compute_nlg`` and the per-study statistics (``uncertainty.NLGStats``) that its bootstrap
    intervals are recomputed from."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from .uncertainty import NLGStats

    check_same_ids(predictions, references)
    gts, res = scorer_inputs(predictions, references, clean)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out: dict[str, Any] = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out.update(ROUGE_L=float(rouge), CIDEr=float(cider), METEOR=None)
    reason = meteor_unavailable_reason() if meteor else "METEOR skipped (meteor=False)"
    meteor_stats = None
    if reason is None:
        try:
            out["METEOR"], meteor_stats = meteor_score_and_stats(gts, res)
            out["meteor_status"] = "computed (pycocoevalcap METEOR 1.5, -l en -norm)"
        except (OSError, ValueError) as err:  # the JVM died or answered nothing (e.g. out of memory)
            out["meteor_status"] = f"METEOR unavailable: the Java scorer failed ({type(err).__name__}: {err})"
    else:
        out["meteor_status"] = reason
    out["n_reports"] = len(gts)
    out["text_cleaning"] = clean
    result = {k: out[k] for k in (*NLG_KEYS, "meteor_status", "n_reports", "text_cleaning")}
    return result, NLGStats(gts, res, meteor_stats)
