"""Shared fixtures: tiny S2D-Align models built in code (nothing is downloaded)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RADIOGRAPHS = sorted((Path(__file__).resolve().parents[1] / "s2d_align" / "resources" / "radiographs").glob("*.png"))


@pytest.fixture(scope="session")
def radiographs():
    """Paths of the two real NIH ChestX-ray14 radiographs shipped with the package."""
    return [str(p) for p in RADIOGRAPHS]


@pytest.fixture(scope="session")
def tiny():
    """A tiny random model and its processor (2-layer Dinov2 / BERT / Llama, 8 memory queries)."""
    from s2d_align.tiny import build_tiny

    model, processor = build_tiny(vocab_size=512, seed=0)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    """The tiny model saved as a folder, one per test module (a module may write into it)."""
    model, processor = tiny
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
