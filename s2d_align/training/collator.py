"""Batches for the curriculum stages: dataset rows -> model inputs (with the stage's auxiliary inputs).

A stage is all-or-nothing for its auxiliary inputs: every sample of a stage-2 batch carries a reference (an empty one
is encoded as empty text) and every sample of a stage-3 batch carries key phrases. Under DeepSpeed every rank must run
the same submodules each step, and the prompt layout stays fixed within a stage.

Stage-3 key phrases are a random non-empty subset of the sample's phrases, drawn afresh each epoch from
`random.Random(f"{seed}:{epoch}:{sample_id}")`: the draw depends only on (seed, epoch, sample), never on a global RNG,
so a resumed run (which skips batches without collating them) sees exactly the subsets of an uninterrupted one.
`EpochCallback` tells the collator the epoch.

Evaluation rows carry `EVAL_CONTEXT_COLUMN` ("full" or "image_only", added by `eval_views`): an "image_only" batch is
laid out as at inference (image placeholders only, whatever the stage), so every stage can log the loss of the
condition `s2d generate` runs in beside the full-context one.

Modality dropout (NOT from the paper; ours, off by default): with probability `modality_dropout` a whole training
batch drops its reference / key-phrase context and uses the image-only prompt. The draw is per batch, not per sample,
because every rank must run the same submodules each step (ZeRO-3 gathers a module's weights collectively when it
runs; DDP expects the same parameters to receive gradients on every rank): it is keyed by (seed, epoch, index of the
batch in the epoch), which every rank knows without communicating, and after a resume the skipped batches are
counted in (`EpochCallback`), so a resumed run draws exactly as an uninterrupted one.

Views: a study with more images than the model's `max_views` is cut by the one view rule (`processing_s2d.select_views`,
frontal first, then lateral), from the rows' `view_positions`, inside the processor. Targets: a report longer than
`max_report_tokens` is cut without EOS (`S2DAlignProcessor.report_ids`); `truncated_reports` counts them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info
from transformers import TrainerCallback

STAGE_MODALITIES = {
    1: ("image",),
    2: ("image", "reference"),
    3: ("image", "reference", "keyphrases"),
}
EVAL_CONTEXT_COLUMN = "s2d_eval_context"
IMAGE_ONLY = ("image",)


def eval_views(dataset, modalities) -> dict:
    """The eval datasets of a stage: {"full": the stage's context, "image_only": the inference condition}; a stage
    whose context is the image alone (stage 1) gets only "image_only" (the two would be the same loss).
    The Trainer logs them as `eval_full_loss` / `eval_image_only_loss`."""
    names = ("image_only",) if tuple(modalities) == IMAGE_ONLY else ("full", "image_only")
    return {name: dataset.add_column(EVAL_CONTEXT_COLUMN, [name] * len(dataset)) for name in names}


def sample_key_phrases(phrases, seed: int, epoch: int, sample_id: str) -> list[str]:
    """A non-empty random subset of `phrases` (in their original order); [] when there are none."""
    phrases = list(phrases or [])
    if not phrases:
        return []
    rng = random.Random(f"{seed}:{epoch}:{sample_id}")
    keep = sorted(rng.sample(range(len(phrases)), rng.randint(1, len(phrases))))
    return [phrases[i] for i in keep]


@dataclass
class S2DAlignCollator:
    """Collate dataset rows (`id`, `image_paths`, `report`, and per stage `reference`, `key_phrases`).

    Args:
        processor: the model's `S2DAlignProcessor`.
        modalities: the context inputs of the stage, e.g. `STAGE_MODALITIES[2]`.
        seed: seed of the key-phrase draw (the run's `SFTConfig.seed`).
        epoch: current epoch (set by `EpochCallback`).
        features: a `FeatureCache`; when given, batches carry `image_features` / `reference_features` instead of
            pixels / reference token ids (key phrases are sampled per step, so they are always encoded live).
        modality_dropout: probability that a training batch drops to the image-only prompt (ours, not the
            paper's; 0 = off). See the module docstring for why it is drawn per batch.
        anatomy_masks: batches carry `anatomy_masks` from the rows' `anatomy_mask_paths` (a model with
            `anatomical_bias: masks`).

    `truncated_reports` / `collated_reports`: running counts of the targets this collator cut at
    `max_report_tokens` (no EOS) and of all targets it built (in the process that runs it: the main process with
    `dataloader_num_workers=0`; for a whole split at once use `processor.report_truncation(reports)`).
    """

    processor: object
    modalities: tuple = ("image",)
    seed: int = 0
    epoch: int = 0
    features: object = None
    modality_dropout: float = 0.0
    anatomy_masks: bool = False
    batch_offset: int = 0  # batches of this epoch skipped by a resume (set by EpochCallback)
    truncated_reports: int = 0
    collated_reports: int = 0

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if not self.modalities or self.modalities[0] != "image":
            raise ValueError(f"every stage reads the image first; got modalities {self.modalities}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout is a probability in [0, 1], got {self.modality_dropout}")
        self._count, self._count_epoch = 0, self.epoch

    def batch_modalities(self, rows) -> tuple:
        """The context of this batch: eval rows say theirs; a training batch may drop to the image-only prompt."""
        context = rows[0].get(EVAL_CONTEXT_COLUMN)
        if context is not None:
            return IMAGE_ONLY if context == "image_only" else self.modalities
        if self.modality_dropout <= 0 or self.modalities == IMAGE_ONLY:
            return self.modalities
        if self._count_epoch != self.epoch:
            self._count, self._count_epoch = 0, self.epoch
        # DataLoader workers take batches round-robin: worker w collates batches w, w + n, w + 2n, ...
        worker = get_worker_info()
        index = self.batch_offset + (self._count * worker.num_workers + worker.id if worker else self._count)
        self._count += 1
        drop = random.Random(f"dropout:{self.seed}:{self.epoch}:{index}").random() < self.modality_dropout
        return IMAGE_ONLY if drop else self.modalities

    def key_phrases(self, rows) -> list[list[str]]:
        return [sample_key_phrases(r.get("key_phrases"), self.seed, self.epoch, r["id"]) for r in rows]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        modalities = self.batch_modalities(rows)
        reports = [r["report"] for r in rows]
        references = ([r.get("reference") or "" for r in rows] if "reference" in modalities else None)
        phrases = self.key_phrases(rows) if "keyphrases" in modalities else None
        masks = self._mask_paths(rows)
        if self.features is None:
            batch = dict(self.processor(images=[list(r["image_paths"]) for r in rows], suffix=reports,
                                        references=references, key_phrases=phrases,
                                        view_positions=[r.get("view_positions") for r in rows], anatomy_masks=masks))
        else:
            batch = self._from_cache(rows, reports, references, phrases, modalities)
            if masks is not None:  # the images themselves are not decoded, only their sizes read
                batch["anatomy_masks"] = self.processor.anatomy_mask_values([list(r["image_paths"]) for r in rows],
                                                                            masks, [r.get("view_positions") for r in rows])
        self._count_truncated(batch["labels"])
        return batch

    def _mask_paths(self, rows) -> list | None:
        if not self.anatomy_masks:
            return None
        missing = [r.get("id") for r in rows if not r.get("anatomy_mask_paths")]
        if missing:
            raise ValueError(f"anatomical_bias='masks' needs an `anatomy_mask_paths` column (one lung + heart mask per "
                             f"image); rows {missing[:5]} have none")
        return [list(r["anatomy_mask_paths"]) for r in rows]

    def _count_truncated(self, labels: torch.Tensor) -> None:
        """A target ends with EOS unless it was cut at `max_report_tokens`."""
        eos = self.processor.tokenizer.eos_token_id
        for row in labels:
            target = row[row != -100]
            self.truncated_reports += int(len(target) > 0 and int(target[-1]) != eos)
        self.collated_reports += len(labels)

    # -- cached features ---------------------------------------------------------------------------------------------
    def _from_cache(self, rows, reports, references, phrases, modalities) -> dict[str, torch.Tensor]:
        images = [self.features.image(r["id"]) for r in rows]
        image_features, view_mask = _pad_stack(images)
        batch = self._text(reports, modalities, view_mask.sum(1).tolist())
        batch["image_features"], batch["view_mask"] = image_features, view_mask
        if references is not None:
            refs = [self.features.reference(r["id"]) for r in rows]
            batch["reference_features"], mask = _pad_stack(refs)
            batch["reference_attention_mask"] = mask.long()
        if phrases is not None:
            encoded = self.processor(key_phrases=phrases, suffix=reports)
            batch["keyphrase_input_ids"] = encoded["keyphrase_input_ids"]
            batch["keyphrase_attention_mask"] = encoded["keyphrase_attention_mask"]
        return batch

    def _text(self, reports, modalities, views) -> dict[str, torch.Tensor]:
        """`input_ids` / `attention_mask` / `labels` laid out as the processor lays them out in training mode
        (prompt with this batch's placeholders, report + EOS, right padding, -100 outside the report); `views`: the
        present views of each study (the `llava` connector writes placeholders per view)."""
        by_views = {v: self.processor.prompt_ids(modalities, v) for v in set(views)}
        prompts = [by_views[v] for v in views]
        answers = [self.processor.report_ids(r, i) for i, r in enumerate(reports)]
        return self.processor.pad_sequences([p + a for p, a in zip(prompts, answers)],
                                            [[-100] * len(p) + a for p, a in zip(prompts, answers)])


def _pad_stack(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (n_i, ...) tensors into (B, max n_i, ...) with zeros, plus the (B, max n_i) bool mask of real entries.

    Padding to the batch's longest entry matches the processor (it pads views and reference tokens the same way),
    which matters for the pooling connectors whose segments depend on the padded length."""
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros(len(tensors), longest, *tensors[0].shape[1:])
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    for i, tensor in enumerate(tensors):
        out[i, : tensor.shape[0]] = tensor
        mask[i, : tensor.shape[0]] = True
    return out, mask


class EpochCallback(TrainerCallback):
    """Tells the collator the epoch at each epoch start, also when a run resumes mid-epoch.

    `state.epoch` is `epoch + steps_done / steps_in_epoch`; at an epoch start it is exactly the epoch (the Trainer
    sets it to `(e - 1) + n / n`), and after a resume it is the checkpoint's fractional value, so its floor is the
    epoch the Trainer resumes in.
    """

    def __init__(self, collator: S2DAlignCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epoch = state.epoch or 0
        self.collator.epoch = math.floor(epoch)
        # a resume restarts mid-epoch: `state.epoch`'s fraction is the share of this epoch's batches already done
        # (and skipped now without being collated); the modality-dropout draws count them in
        done = epoch - math.floor(epoch)
        self.collator.batch_offset = round(done * len(train_dataloader)) if done and train_dataloader else 0
