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


def adamw_steps(model, inputs, steps: int, lr: float = 1e-3, on_first_backward=None) -> list:
    """`steps` AdamW steps of the model's trainable parameters on one batch; the losses, in order.
    `on_first_backward(model)` runs once, after the first backward (to look at gradients)."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        if step == 0 and on_first_backward is not None:
            on_first_backward(model)
        optimizer.step()
        losses.append(loss.item())
    return losses
