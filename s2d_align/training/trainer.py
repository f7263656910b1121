"""`S2DTrainer`: TRL's `SFTTrainer` with checkpoints that hold only what a stage trains.

Stage 1 is not a PEFT model, so the stock Trainer writes the whole model into every checkpoint (about 14 GB at 7B,
more under DeepSpeed, whose checkpoint also stores every frozen weight). Here a checkpoint of a non-PEFT stage holds:

    checkpoint-N/trainable.safetensors   the trainable tensors only (without DeepSpeed; fp32, as trained)
    checkpoint-N/optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json    (the Trainer's own)
    checkpoint-N/global_stepN/           under DeepSpeed: its checkpoint, saved with `exclude_frozen_parameters=True`

The frozen weights are never needed to resume: they are the stage input's, which `run_stage` loads again. PEFT stages
are already small (the Trainer saves the adapter and, under DeepSpeed, excludes frozen parameters itself).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from safetensors.torch import load_file, save_file
from trl import SFTTrainer

TRAINABLE_WEIGHTS = "trainable.safetensors"


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a resume needs, under their `state_dict` names (detached CPU copies)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


class S2DTrainer(SFTTrainer):
    """`SFTTrainer` whose checkpoints of non-PEFT stages hold only the trainable tensors (see the module docstring)."""

    _in_checkpoint = False

    def _save_checkpoint(self, model, trial):
        self._in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._in_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not (self._in_checkpoint and not _is_peft(self.model)):
            return super().save_model(output_dir, _internal_call)
        if self.is_deepspeed_enabled:
            return  # the DeepSpeed checkpoint written next (`_save_optimizer_and_scheduler`) holds the trainables
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_file(trainable_state(self.accelerator.unwrap_model(self.model)),
                      os.path.join(output_dir, TRAINABLE_WEIGHTS), metadata={"format": "pt"})

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not (self.is_deepspeed_enabled and not _is_peft(self.model)):
            return super()._save_optimizer_and_scheduler(output_dir)
        # transformers passes `exclude_frozen_parameters=True` to DeepSpeed only for PEFT models; stage 1 freezes the
        # encoders and the LLM itself, so its module states would otherwise hold the whole 7B model per checkpoint.
        # The Trainer's own method still runs (it also saves the LR scheduler, which DeepSpeed does not own here).
        engine = self.model_wrapped
        engine.save_checkpoint = functools.partial(type(engine).save_checkpoint, engine,
                                                   exclude_frozen_parameters=True)
        try:
            super()._save_optimizer_and_scheduler(output_dir)
        finally:
            del engine.save_checkpoint  # the class's method again

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE_WEIGHTS)
        if _is_peft(self.model) or not os.path.isfile(path):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        state = load_file(path, device="cpu")
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(f"{path} holds other tensors than this stage trains: missing "
                             f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}; "
                             "it belongs to another stage or model")
        model.load_state_dict(state, strict=False)

    def train(self, *args, **kwargs):
        with _deepspeed_resume_without_frozen(not _is_peft(self.model)):
            return super().train(*args, **kwargs)


@contextlib.contextmanager
def _deepspeed_resume_without_frozen(active: bool):
    """A DeepSpeed checkpoint saved with `exclude_frozen_parameters=True` lacks the frozen tensors, so its module state
    must be loaded non-strictly. transformers (5.23) asks for a strict load for every non-PEFT model, through the
    module-level `deepspeed_load_checkpoint` that `Trainer.train` calls; we swap that name for the duration of
    `train()` (there is no Trainer hook for it). The frozen weights stay the stage input's, already loaded."""
    import transformers.trainer as hf_trainer

    original = hf_trainer.deepspeed_load_checkpoint
    if active:
        hf_trainer.deepspeed_load_checkpoint = (
            lambda engine, path, load_module_strict=True: original(engine, path, load_module_strict=False))
    try:
        yield
    finally:
        hf_trainer.deepspeed_load_checkpoint = original
