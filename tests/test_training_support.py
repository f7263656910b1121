"""Shared helpers of the training tests (no tests here): a tiny dataset on disk, a tiny model folder, snapshots.

The dataset is built here, not by the phantom generator, so the training tests stay self-contained: four report
classes, each with its own image brightness, so the image determines the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

REPORTS = [
    "the heart is normal in size. the lungs are clear.",
    "there is a large right pleural effusion.",
    "cardiomegaly with mild pulmonary edema.",
    "left lower lobe opacity concerning for pneumonia.",
]
KEY_PHRASES = [
    ["normal heart size", "clear lungs"],
    ["large right pleural effusion", "effusion"],
    ["cardiomegaly", "mild pulmonary edema", "enlarged heart"],
    ["left lower lobe opacity", "pneumonia"],
]
# Small enough for CPU, big enough to learn: 16 patches per view, 4 memory queries, a 2-layer 64-wide LLM.
TINY = dict(vocab_size=256, seed=0, image_size=32, patch_size=8, vision_width=32, llm_width=64, num_memory_queries=4)
# SFTConfig values of every CPU test run (full batch: the loss is then a deterministic function of the weights).
CPU_ARGS = dict(use_cpu=True, bf16=False, per_device_train_batch_size=8, logging_steps=1,
                activation_checkpointing=False, save_strategy="no", dataloader_num_workers=0, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and 2-core CI machines are shared with other test processes (two
    spinning OpenMP threads on a busy core slow these tests down many times). Import it into a test module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(root: Path, split: str, n: int, rng) -> list[dict]:
    rows = []
    for i in range(n):
        k = i % len(REPORTS)
        paths = []
        for view in range(1 + i % 2):  # one or two views
            pixels = (rng.random((40, 40)) * 60 + k * 45).astype(np.uint8)
            path = root / "images" / f"{split}_{i}_{view}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
        rows.append(dict(id=f"{split}-{i}", subject_id=f"p{i // 2}", study_id=f"s{i}", study_date="",
                         image_paths=paths, view_positions=["PA", "LATERAL"][: len(paths)], report=REPORTS[k],
                         reference=REPORTS[(k + 1) % len(REPORTS)] if i % 3 else "", reference_id="",
                         key_phrases=KEY_PHRASES[k], labels=""))
    return rows


def make_dataset(root: Path, sizes=(("train", 8), ("validation", 4), ("test", 2)), drop=()) -> Path:
    from datasets import Dataset, DatasetDict

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in sizes:
        dataset = Dataset.from_list(_rows(root, split, n, rng))
        splits[split] = dataset.remove_columns(list(drop)) if drop else dataset
    out = root / "dataset"
    DatasetDict(splits).save_to_disk(str(out))
    return out


def make_model(folder: Path) -> Path:
    """A tiny S2D-Align folder whose LLM was briefly trained on the reports (a frozen random LLM predicts a uniform
    distribution that no prefix can move, so stage 1 would have nothing to learn)."""
    from s2d_align.tiny import build_tiny

    model, processor = build_tiny(**TINY)
    tokens = processor.tokenizer(REPORTS, padding=True, return_tensors="pt")
    labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
    llm = model.model.language_model
    optimizer = torch.optim.AdamW([*llm.parameters(), *model.lm_head.parameters()], lr=1e-2)
    for _ in range(40):
        logits = model.lm_head(llm(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def plain_state(model) -> dict[str, torch.Tensor]:
    """A model's weights under the names of a saved S2D-Align model: for a PEFT model, the frozen originals
    (`base_layer`, `original_module`) under their plain names, LoRA factors and trained copies left out."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        out[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor.detach().clone()
    return out


def trained_state(model) -> dict[str, torch.Tensor]:
    """The trained copies of a PEFT model (`modules_to_save.default`) under their plain names, or the whole state."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = base.state_dict()
    if not any(".modules_to_save." in k for k in state):
        return {k: v.detach().clone() for k, v in state.items()}
    return {k.replace(".modules_to_save.default.", "."): v.detach().clone()
            for k, v in state.items() if ".modules_to_save.default." in k}


class Snapshot(TrainerCallback):
    """Copies of the weights when each training run (stage) begins and ends, in run order."""

    def __init__(self):
        self.begin, self.end, self.trained_begin, self.trained_end = [], [], [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin.append(plain_state(model))
        self.trained_begin.append(trained_state(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end.append(plain_state(model))
        self.trained_end.append(trained_state(model))


def load_state(folder) -> dict[str, torch.Tensor]:
    from modeling_s2d import S2DAlignForConditionalGeneration

    return S2DAlignForConditionalGeneration.from_pretrained(folder).state_dict()
