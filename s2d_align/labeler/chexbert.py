"""CheXbert labels through the ``f1chexbert`` package, only from weights already on disk.

``f1chexbert.F1CheXbert`` downloads ``chexbert.pth`` (and the ``bert-base-uncased`` tokenizer/config)
when they are missing; we check first and refuse with a message instead, and build it with the
Hugging Face hub switched to offline so that nothing is fetched.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .phrases import OBSERVATIONS

INSTALL_HINT = "pip install 's2d-align[chexbert]'"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub / transformers refuse network access for the duration."""
    import huggingface_hub.constants as hf_constants

    saved, env = hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hf_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def unavailable_reason() -> str | None:
    """Why the CheXbert backend cannot run offline here, or None when it can."""
    try:
        import f1chexbert.f1chexbert as f1c
    except ImportError:
        return f"CheXbert labeler unavailable: the `f1chexbert` package is not installed ({INSTALL_HINT})"
    checkpoint = os.path.join(f1c.CACHE_DIR, "chexbert.pth")
    if not os.path.exists(checkpoint):
        return (f"CheXbert labeler unavailable: weights not found at {checkpoint} (we never download; "
                "copy chexbert.pth there, or use --labeler rules)")
    try:
        from transformers import AutoConfig

        with hub_offline():
            AutoConfig.from_pretrained("bert-base-uncased", local_files_only=True)
    except OSError:
        return ("CheXbert labeler unavailable: `bert-base-uncased` config/tokenizer not in the local "
                "Hugging Face cache (we never download)")
    return None


class CheXbertLabeler:
    """``labeler(report) -> {observation: 1 | 0 | -1 | None}`` with CheXbert (CheXpert-style values)."""

    def __init__(self, device: str | None = None):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        from f1chexbert import F1CheXbert

        with hub_offline():
            self._model = F1CheXbert(device=device)

    def __call__(self, report: str) -> dict[str, int | None]:
        # mode="classification" keeps CheXbert's 4 classes: '' blank, 1, 0, -1 (uncertain)
        values = self._model.get_label(report, mode="classification")
        return {obs: (None if v == "" else int(v)) for obs, v in zip(OBSERVATIONS, values)}
