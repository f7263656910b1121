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
from pathlib import Path

import torch
from datasets import Dataset
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


def text_prompt_ids(processor, context: str) -> list[int]:
    """Token ids of the prompt with `context` as plain text where the placeholders go, answer marker last (how the
    LLM stand-in is pretrained, and how `bench.grounding_probe` checks that it writes what it is told)."""
    tokenizer = processor.tokenizer
    marker = tokenizer(processor.answer_marker, add_special_tokens=False)["input_ids"]
    return tokenizer(processor.prompt.format(context=context))["input_ids"] + marker


def _lm_batch(processor, rows: list[dict]) -> dict:
    prompts = [text_prompt_ids(processor, r["context"]) for r in rows]
    answers = [processor.report_ids(r["report"], i) for i, r in enumerate(rows)]
    return dict(processor.pad_sequences([p + a for p, a in zip(prompts, answers)],
                                        [[-100] * len(p) + a for p, a in zip(prompts, answers)]))


class _VisionProbe(nn.Module):
    """Dinov2 + a linear head on mean- and max-pooled patch tokens (the head is discarded after pretraining)."""

    def __init__(self, vision_tower: nn.Module, num_targets: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.head = nn.Linear(2 * vision_tower.config.hidden_size, num_targets)

    def forward(self, pixel_values, targets):
        from modeling_s2d import vision_prefix_tokens

        hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        patches = hidden[:, vision_prefix_tokens(self.vision_tower.config):]
        # mean and max over the patches: large findings (heart size) move the mean, small ones (a focal opacity,
        # an apical pneumothorax) live in a few patches that a mean alone would dilute. Pooling does not erase
        # where: the patch tokens keep their side (a linear probe reads it from them at 1.00 on the phantom test
        # split, `python -m bench.grounding_probe`)
        logits = self.head(torch.cat([patches.mean(1), patches.amax(1)], dim=-1))
        return {"loss": nn.functional.binary_cross_entropy_with_logits(logits, targets), "logits": logits}


def pretrain_vision(model, processor, train_rows: Dataset, output_dir: str, *, epochs: float = 6,
                    lr: float = 1e-3, batch_size: int = 32, min_count: int = 5, seed: int = 0) -> list[dict]:
    """Teach the image encoder the phantom's findings (frontal view) through their key phrases."""
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
    dataset = Dataset.from_dict({"pixel_values": pixels.numpy(), "targets": targets.numpy()}).with_format("torch")
    vision = model.model.vision_tower
    vision.requires_grad_(True)
    vision.train()
    probe = _VisionProbe(vision, len(vocabulary))
    trainer = Trainer(model=probe, args=_args(output_dir, epochs, lr, batch_size, seed), train_dataset=dataset)
    trainer.train()
    vision.requires_grad_(False)
    vision.eval()
    return trainer.state.log_history


# -- the committed stand-ins ----------------------------------------------------------------------------------------
# A real run starts from checkpoints that were pretrained elsewhere (Rad-DINO, Vicuna); the demo's stand-ins are
# pretrained checkpoints too, and pretraining them took 11.6 of the demo's 31 minutes and made two runs of the same
# seed differ (their threads' summation order differs under load). So the package ships the stand-ins that
# `s2d demo` pretrained (`resources/demo_standins/`), with the recipe they were made from; the demo uses them when its
# recipe is the same, and pretrains afresh otherwise (or with `standins="pretrain"`), writing a new bundle.
BUNDLE_FILES = ("standins.safetensors", "recipe.json")
STANDIN_PREFIXES = ("model.vision_tower.", "model.language_model.", "lm_head.")


def bundled_standins_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("s2d_align") / "resources" / "demo_standins"))


def standin_recipe(fields: dict, data_dir: str | Path, tokenizer) -> dict:
    """What the stand-ins depend on: the demo settings that shape them (`fields`), the phantom training split (ids,
    reports, key phrases and the generator's findings state of every study) and the report tokenizer's vocabulary.

    Not the image bytes: the renderer's float arithmetic may round a pixel differently on another CPU, and the
    committed stand-ins must still be used on a fresh machine. What the images show is fixed by the findings."""
    import hashlib
    import json

    from datasets import load_from_disk

    train = load_from_disk(str(data_dir))["train"]
    digest = hashlib.sha256()
    for row in zip(train["id"], train["report"], train["key_phrases"], train["findings"]):
        digest.update(json.dumps(row).encode())
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    return {"fields": dict(sorted(fields.items())), "train_split_sha256": digest.hexdigest(),
            "tokenizer_vocab_sha256": hashlib.sha256(vocabulary).hexdigest()}


def load_bundled_standins(recipe: dict, folder: Path | None = None) -> tuple[dict | None, dict | None, str]:
    """`(state_dict, logs, "")` when `folder` holds stand-ins made with exactly `recipe`, else `(None, None, why)`."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder or bundled_standins_dir())
    if not all((folder / name).is_file() for name in BUNDLE_FILES):
        return None, None, f"no stand-in bundle in {folder}"
    saved = json.loads((folder / "recipe.json").read_text())
    for key in ("fields", "train_split_sha256", "tokenizer_vocab_sha256"):
        if saved.get(key) != recipe[key]:
            if key == "fields":
                changed = sorted(k for k in set(saved[key]) | set(recipe[key])
                                 if saved[key].get(k) != recipe[key].get(k))
                return None, None, f"the bundled stand-ins were made with other settings ({', '.join(changed)})"
            return None, None, f"the bundled stand-ins were made from another {key.rsplit('_', 1)[0].replace('_', ' ')}"
    return load_file(str(folder / "standins.safetensors")), saved.get("logs", {}), ""


def write_standin_bundle(model, recipe: dict, logs: dict, folder: Path) -> Path:
    """Save the stand-in weights of `model` (vision tower, LLM, LM head) and the recipe, as `s2d_align/resources/
    demo_standins/` holds them (copy the folder there to refresh the committed stand-ins)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k.startswith(STANDIN_PREFIXES)}
    save_file(state, str(folder / "standins.safetensors"))
    (folder / "recipe.json").write_text(json.dumps({**recipe, "logs": logs, "made_by": "s2d demo (stand-ins "
                                                    "pretrained in the run)"}, indent=1))
    return folder
