"""RadGraph F1 (simple / partial / complete; Delbrouck et al., 2022) via the ``radgraph`` package.

Optional: ``pip install 's2d-align[radgraph]'``, and its model weights must already be in the local
cache (the package would download them; we build it with the hub offline so it cannot).
"""

from __future__ import annotations

from typing import Any

from ..labeler.chexbert import hub_offline

INSTALL_HINT = "pip install 's2d-align[radgraph]'"


def compute_radgraph(predictions: dict[str, str], references: dict[str, str],
                     model_type: str = "radgraph") -> dict[str, Any]:
    """``{"simple", "partial", "complete"}`` F1 averaged over reports, or ``{"skipped": reason}``."""
    try:
        from radgraph import F1RadGraph
    except ImportError:
        return {"skipped": f"RadGraph F1 skipped: the `radgraph` package is not installed ({INSTALL_HINT})"}
    try:
        with hub_offline():
            scorer = F1RadGraph(reward_level="all", model_type=model_type)
    except Exception as err:  # the package raises various errors when its weights are absent
        return {"skipped": f"RadGraph F1 skipped: {model_type} weights not available offline "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"}
    ids = sorted(predictions)
    mean_reward, *_ = scorer(hyps=[predictions[i] for i in ids], refs=[references[i] for i in ids])
    simple, partial, complete = (float(x) for x in mean_reward)
    return {"simple": simple, "partial": partial, "complete": complete, "model_type": model_type}
