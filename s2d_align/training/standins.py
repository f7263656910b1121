"""Stand-ins for the pretrained checkpoints in the CPU demo.

A tiny random LLM is not a language model and a tiny random ViT is not Rad-DINO. Before the curriculum runs
unchanged, the demo gives them what pretraining gives the real ones:
  - the LLM learns to write report text (phantom training reports, the real IU X-Ray reports, text-only phantom
    reports) after the prompt, and to write what its user turn says (the key phrases, as text: their sides,
    levels, sizes and devices), the way Vicuna already writes fluent text and follows its instructions
    (`pretrain_llm`);
  - the image encoder learns to see the phantom's findings, the way Rad-DINO already represents chest anatomy
    (`pretrain_vision`: multi-label classification of the training studies' key phrases from pooled patch tokens,
    with a head that is thrown away).
Both use the transformers `Trainer`; then the encoder is frozen again by the curriculum, as Rad-DINO is.
"""

from __future__ import annotations

from collections import Counter

import torch
from datasets import Dataset
from PIL import Image
from torch import nn
from transformers import Trainer, TrainingArguments

from processing_s2d import load_radiograph


def _args(output_dir: str, epochs: float, lr: float, batch_size: int, seed: int) -> TrainingArguments:
    return TrainingArguments(output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=batch_size, lr_scheduler_type="cosine",
                             warmup_steps=0.05, weight_decay=0.01, logging_steps=10, save_strategy="no",
                             report_to=[], seed=seed, use_cpu=not torch.cuda.is_available(),
                             remove_unused_columns=False, disable_tqdm=False, dataloader_num_workers=0)


def pretrain_llm(model, processor, reports: list[str], output_dir: str, *, key_phrases: list | None = None,
                 epochs: float = 2, lr: float = 2e-3, batch_size: int = 32, seed: int = 0,
                 context_every: int = 2) -> list[dict]:
    """Train the LLM body and head as an instruction-following report writer.

    One example in `context_every` puts the report's key phrases as plain text in the user turn, where the
    placeholders go later; the others leave it empty. Vicuna reads what its user turn says; a tiny LM trained only
    on bare reports learns to ignore that slot, and a frozen LM that ignores it cannot be steered by stage 1's
    adapter.
    """
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("model.language_model.", "lm_head.")))
    phrases = key_phrases or [[] for _ in reports]
    rows = [{"report": r, "context": "; ".join(p) if i % context_every == 0 else ""}
            for i, (r, p) in enumerate(zip(reports, phrases)) if r.strip()]
    trainer = Trainer(model=model, args=_args(output_dir, epochs, lr, batch_size, seed),
                      train_dataset=Dataset.from_list(rows), data_collator=lambda batch: _lm_batch(processor, batch))
    trainer.train()
    model.requires_grad_(False)
    return trainer.state.log_history


def _lm_batch(processor, rows: list[dict]) -> dict:
    tokenizer = processor.tokenizer
    marker = tokenizer(processor.answer_marker, add_special_tokens=False)["input_ids"]
    prompts = [tokenizer(processor.prompt.format(context=r["context"]))["input_ids"] + marker for r in rows]
    answers = [processor.report_ids(r["report"], i) for i, r in enumerate(rows)]
    return dict(processor.pad_sequences([p + a for p, a in zip(prompts, answers)],
                                        [[-100] * len(p) + a for p, a in zip(prompts, answers)]))


class _VisionProbe(nn.Module):
    """Dinov2 + a linear head on mean- and max-pooled patch tokens (the head is discarded after pretraining), and
    with `num_regions` a second linear head on every patch token that says which findings cover that patch."""

    def __init__(self, vision_tower: nn.Module, num_targets: int, num_regions: int = 0):
        super().__init__()
        self.vision_tower = vision_tower
        self.head = nn.Linear(2 * vision_tower.config.hidden_size, num_targets)
        self.patch_head = nn.Linear(vision_tower.config.hidden_size, num_regions) if num_regions else None

    def forward(self, pixel_values, targets, patch_targets=None):
        patches = self.vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:]
        # mean and max over the patches: large findings (heart size) move the mean, small ones (a focal opacity,
        # an apical pneumothorax) live in a few patches that a mean alone would dilute
        logits = self.head(torch.cat([patches.mean(1), patches.amax(1)], dim=-1))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        if self.patch_head is not None and patch_targets is not None:
            # pooling forgets where: a pooled objective lets patch tokens become position-free, while Rad-DINO's
            # (DINOv2/iBOT) patch tokens describe their own patch; this dense term keeps them local
            loss = loss + nn.functional.binary_cross_entropy_with_logits(self.patch_head(patches), patch_targets)
        return {"loss": loss, "logits": logits}


REGIONS = ("effusion", "opacity", "pneumothorax", "edema", "heart", "device")


def patch_targets(locations: str, grid: int, image_side: int, min_overlap: float = 0.25) -> torch.Tensor:
    """(grid * grid, len(REGIONS)) float targets: 1 where a finding's box covers >= `min_overlap` of a patch.

    `locations` is the phantom's JSON list of {"finding", "bbox": [x0, y0, x1, y1]} in pixels of the rendered
    (square) image of side `image_side`; the encoder sees that image resized, so the grid maps by scale alone.
    """
    import json

    cell = image_side / grid
    edges = torch.arange(grid + 1, dtype=torch.float32) * cell
    out = torch.zeros(grid, grid, len(REGIONS))
    for loc in json.loads(locations):
        if loc["finding"] not in REGIONS:
            continue
        x0, y0, x1, y1 = loc["bbox"]
        cover_x = (torch.minimum(edges[1:], torch.tensor(float(x1))) -
                   torch.maximum(edges[:-1], torch.tensor(float(x0)))).clamp(min=0) / cell
        cover_y = (torch.minimum(edges[1:], torch.tensor(float(y1))) -
                   torch.maximum(edges[:-1], torch.tensor(float(y0)))).clamp(min=0) / cell
        covered = (cover_y[:, None] * cover_x[None, :]) >= min_overlap  # rows = y, columns = x, as patches are
        out[..., REGIONS.index(loc["finding"])] = torch.maximum(out[..., REGIONS.index(loc["finding"])],
                                                                covered.float())
    return out.reshape(grid * grid, len(REGIONS))


def pretrain_vision(model, processor, train_rows: Dataset, output_dir: str, *, epochs: float = 6,
                    lr: float = 1e-3, batch_size: int = 32, min_count: int = 5, seed: int = 0,
                    dense: bool = False) -> list[dict]:
    """Teach the image encoder the phantom's findings (frontal view) through their key phrases; with `dense`, also
    which findings cover each patch (from the phantom's `locations` boxes), so patch tokens stay local."""
    counts = Counter(p for phrases in train_rows["key_phrases"] for p in phrases)
    vocabulary = sorted(p for p, n in counts.items() if n >= min_count)
    index = {p: i for i, p in enumerate(vocabulary)}
    images = [load_radiograph(paths[0]) for paths in train_rows["image_paths"]]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    targets = torch.zeros(len(images), len(vocabulary))
    for row, phrases in enumerate(train_rows["key_phrases"]):
        for phrase in phrases:
            if phrase in index:
                targets[row, index[phrase]] = 1.0
    columns = {"pixel_values": pixels.numpy(), "targets": targets.numpy()}
    vision = model.model.vision_tower
    if dense:
        grid = vision.config.image_size // vision.config.patch_size
        sides = [Image.open(paths[0]).size for paths in train_rows["image_paths"]]
        if any(w != h for w, h in sides):
            raise ValueError("dense vision pretraining needs square phantom images")
        columns["patch_targets"] = torch.stack([patch_targets(loc, grid, side[0]) for loc, side in
                                                zip(train_rows["locations"], sides)]).numpy()
    dataset = Dataset.from_dict(columns).with_format("torch")
    vision.requires_grad_(True)
    vision.train()
    probe = _VisionProbe(vision, len(vocabulary), len(REGIONS) if dense else 0)
    trainer = Trainer(model=probe, args=_args(output_dir, epochs, lr, batch_size, seed), train_dataset=dataset)
    trainer.train()
    vision.requires_grad_(False)
    vision.eval()
    return trainer.state.log_history
