"""Write a stage's output: a complete, loadable model folder plus its training log and curve.

With LoRA the trainer first saves the adapter (`trainer.save_model`, which under ZeRO-3 gathers the partitioned
weights; a plain `model.save_pretrained` there writes empty LoRA tensors), then the main process rebuilds the merged
model from the stage input + the adapter, outside `zero.Init`, and saves it with `save_pretrained` (the model class is
registered for remote code, so the folder carries configuration_s2d.py / modeling_s2d.py / processing_s2d.py).
The merge runs in float32, layer by layer (base weight and LoRA factors), and each merged weight is rounded to the
folder's dtype once. Adding a small LoRA delta in bf16 rounds twice (the delta, then the sum) or, with bf16 factors,
computes the delta itself in bf16. PEFT 0.21's default merge happens to round once here (it upcasts the factors to
float32 on load and `bf16 += fp32` rounds once), but its `safe_merge=True` path casts the delta to bf16 first, and
neither is a documented guarantee; doing the arithmetic ourselves makes it one.

Trainer checkpoints go beside the stage's folder (`checkpoint_dir`), never inside it, so a trained folder holds only
the model and its logs and can be published as is.
"""

from __future__ import annotations

import json
from pathlib import Path

from modeling_s2d import S2DAlignForConditionalGeneration

from ..build import set_generation_defaults
from .zero import outside_zero_init

ADAPTER_DIR = "adapter"
STAGE_FILE = "s2d_stage.json"
INFO_FILE = "training_info.json"  # provenance read by the model card: components, datasets


def checkpoint_dir(output_dir) -> Path:
    """Where a stage's Trainer checkpoints go: `<output_dir>-checkpoints`, beside its model folder (e.g.
    `out/train/s1` -> `out/train/s1-checkpoints`)."""
    out = Path(output_dir)
    return out.with_name(f"{out.name}-checkpoints")


def export_stage(trainer, spec, model_path, output_dir, processor, dtype, summary: dict) -> Path:
    """Save the trained stage as a model folder at `output_dir`; returns it. Every process must call this."""
    out = Path(output_dir)
    if spec.lora:
        adapter = out / ADAPTER_DIR
        trainer.save_model(str(adapter))  # collective under ZeRO-3
        if trainer.accelerator.is_main_process:
            with outside_zero_init():
                merged = merge_adapter(model_path, adapter, dtype)
            # the merge reloads the stage input: carry over what this stage set on the config (the report section)
            merged.config.section = summary.get("section", merged.config.section)
            set_generation_defaults(merged, processor)
            merged.save_pretrained(out)
            processor.save_pretrained(out)
            _drop_pickles(adapter)
    else:
        if trainer.args.deepspeed_plugin is None:
            trainer.model.to(dtype)  # back from the float32 adapters of `upcast_trainables`
        # A model loaded under ZeRO-3's zero.Init records legacy checkpoint renamings (LayerNorm gamma/beta,
        # language_model.model.*) that save_pretrained would write back: the folder would load, but look unlike every
        # other. Forgetting them (a private attribute that transformers' revert_weight_conversion reads) saves the
        # default format, as a plain run does.
        trainer.model._weight_conversions = None
        set_generation_defaults(trainer.model, processor)
        trainer.save_model(str(out))  # the whole model (gathered under ZeRO-3), config, processor, remote code
    if trainer.accelerator.is_main_process:
        _drop_pickles(out)
        write_logs(trainer.state.log_history, out, title=f"stage {spec.name}")
        (out / "training_args.json").write_text(trainer.args.to_json_string())
        (out / STAGE_FILE).write_text(json.dumps({**summary, "complete": True}, indent=1, default=str))
        carry_training_info(model_path, out, summary.get("dataset"))
    trainer.accelerator.wait_for_everyone()
    return out


def merge_adapter(model_path, adapter_dir, dtype) -> S2DAlignForConditionalGeneration:
    """The stage input with the adapter merged in float32 and each merged weight rounded once to `dtype`.

    Layer by layer (a LoRA layer's base weight goes to float32, merges, goes back), so the peak memory stays the
    model in `dtype` plus one layer in float32, not a float32 copy of the 7B model."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base = S2DAlignForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    for module in model.modules():
        if isinstance(module, LoraLayer):
            stored = module.get_base_layer().weight.dtype
            module.get_base_layer().float()
            for factors in (module.lora_A, module.lora_B):  # float32 already when PEFT upcast them on load
                factors.float()
            module.merge()
            module.get_base_layer().to(stored)
    return model.unload()  # every LoRA layer is merged: unloading keeps the merged base layers


def carry_training_info(model_path, out: Path, dataset_path) -> None:
    """Copy the stage input's `training_info.json` (components, written by `s2d build`) to the stage's folder and
    add the stage's dataset (from its `prepare_summary.json`): the model card's licence and datasets come from it."""
    source = Path(model_path) / INFO_FILE
    info = json.loads(source.read_text()) if source.is_file() else {}
    summary = Path(dataset_path or "") / "prepare_summary.json"
    dataset = json.loads(summary.read_text()).get("options", {}).get("dataset") if summary.is_file() else None
    if dataset:
        info["datasets"] = sorted(set(info.get("datasets", [])) | {dataset})
    if info:
        (out / INFO_FILE).write_text(json.dumps(info, indent=1))


def _drop_pickles(folder: Path) -> None:
    # Trainer.save_model also writes its TrainingArguments with torch.save; the folder keeps the JSON copy instead.
    (folder / "training_args.bin").unlink(missing_ok=True)


def is_complete(output_dir) -> bool:
    marker = Path(output_dir) / STAGE_FILE
    try:
        return json.loads(marker.read_text()).get("complete", False)
    except (OSError, json.JSONDecodeError):
        return False


def write_logs(log_history: list[dict], out: Path, title: str = "") -> None:
    """`log_history.json` and `training_curve.png` (training loss, and eval loss when logged, vs step)."""
    (out / "log_history.json").write_text(json.dumps(log_history, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    eval_keys = sorted({k for e in log_history for k in e if k.startswith("eval_") and k.endswith("loss")})
    for key, label in (("loss", "train"), *((k, k[len("eval_"):-len("_loss")] or "eval") for k in eval_keys)):
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (report tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curve.png", dpi=100)
    plt.close(fig)
