"""Frozen image features for `retrieval` references: a Dinov2-family checkpoint folder on disk.

The feature of an image is the mean of the encoder's `last_hidden_state` over all tokens. Images are
read with the processor's `load_radiograph` (16-bit, RGBA, palette and grayscale all become RGB), so
retrieval sees exactly what training sees. Nothing is downloaded: the folder must hold the weights and
a `preprocessor_config.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def load_feature_encoder(model_dir: str | Path, device: str = "cpu") -> Callable[[list[str]], np.ndarray]:
    """A function mapping a batch of image paths to an (n, hidden) float32 array of mean-pooled features."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    from processing_s2d import load_radiograph

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"feature model folder not found: {path}")
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    except OSError as err:
        raise ValueError(f"cannot load the feature model from {path}: {err}".splitlines()[0]) from None

    def encode(paths: list[str]) -> np.ndarray:
        images = [load_radiograph(p) for p in paths]
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        return hidden.mean(dim=1).float().cpu().numpy()

    return encode
