"""The curriculum: what each stage reads and trains, its paper defaults, and how curricula are spelled.

| stage | context inputs                  | trains (`set_stage`)                        | LoRA | epochs | lr    |
|-------|---------------------------------|---------------------------------------------|------|--------|-------|
| s1    | image                           | Q_mem, SMA_v, view embedding                 | no   | 8      | 3e-4  |
| s2    | image + reference               | + SMA_t, LoRA                                | yes  | 5      | 1e-4  |
| s3    | image + reference + key phrases | + SMA_p                                      | yes  | 3      | 5e-5  |
| joint | image + reference + key phrases | everything of s3, from the start             | yes  | 16     | 3e-4  |

| align | image                           | Q_mem, image adapter, view embedding        | no   | 1      | 1e-3  |
| lora  | image                           | the same + LoRA                             | yes  | 3      | 2e-4  |

Named curricula: `s2d` = `s1,s2,s3` (the paper's), `rrg24` = `align,lora`: Gla-AI4BioMed's RRG24 recipe (arXiv
2412.04954, section 3.2), adapter alignment with the LLM frozen, then LoRA, the image alone as context in both
(no reference report, no key phrases). Pair it with `connector: llava` for their MLP-over-every-patch model. Their
paper gives stage 1's length (one epoch) but no learning rates or stage-2 length: ours are LLaVA-1.5's (adapter
pretraining at 1e-3, LoRA fine-tuning at 2e-4), with 3 LoRA epochs (ours). `lora` trains the image adapter too, as
LLaVA's second stage trains its projector.

`joint` is the paper's "all signals at once" ablation. The paper gives no schedule for it; we train it for 16 epochs,
the whole curriculum's budget (8 + 5 + 3), so the comparison with `s1,s2,s3` is at equal compute, and at stage 1's
learning rate because its adapters start from scratch, as in stage 1.

All stages: AdamW, cosine schedule with 3% linear warmup (`warmup_steps=0.03`: transformers 5 reads a float below 1
as a ratio; `warmup_ratio` is gone). Values the user passes always win over these defaults.

Where each default comes from. "paper": S2D-Align (arXiv 2511.11066), section 4 and appendix C, as DESIGN.md
section 2 reads it (appendix C's table lists every setting, but the numbers are lost in our text copy of the paper);
"ours": a choice of this package where the paper is silent or its number is lost.

| default                                   | value                    | source                                        |
|-------------------------------------------|--------------------------|-----------------------------------------------|
| epochs s1 / s2 / s3                       | 8 / 5 / 3                | paper                                         |
| learning rate s1 / s2 / s3                | 3e-4 / 1e-4 / 5e-5       | paper                                         |
| optimizer, schedule                       | AdamW, cosine + warmup   | paper                                         |
| warmup length                             | 3% of the steps          | ours (the paper's warmup steps are lost)      |
| weight decay, AdamW betas                 | the Trainer's (0, .9/.999)| ours (the paper's values are lost)           |
| joint: epochs, learning rate              | 16, 3e-4                 | ours (see above)                              |
| LoRA targets                              | all linear layers of the | paper                                         |
|                                           | LLM's transformer blocks |                                               |
| LoRA r / alpha / dropout (train_sft.py)   | 16 / 32 / 0.05           | ours (the paper's values are lost)            |
| bf16                                      | on where the GPU has it  | ours (TRL's default, off on CPU)              |
| logging_steps                             | 10                       | ours                                          |
| save_total_limit                          | 2                        | ours (a checkpoint per `save_steps` without a |
|                                           |                          | limit fills a disk on a real run)             |
| activation checkpointing                  | on; stage 1 non-reentrant| ours (TRL's default is on)                    |
| modality dropout                          | 0 (off)                  | ours, NOT from the paper                      |
| batch size, gradient accumulation         | the Trainer's (8, 1)     | ours (the paper's batch size is lost): set    |
|                                           |                          | them for your GPUs                            |
| gradient clipping, seed                   | the Trainer's (1.0, 42)  | ours (the paper gives neither)                |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .collator import STAGE_MODALITIES

# Llama's projections, and GPT-2's Conv1D layers (`c_attn`, `c_proj`, `c_fc`; PEFT sets `fan_in_fan_out` for them)
LORA_TARGETS = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)")
# The adapters are trained alongside LoRA; PEFT keeps a trainable copy of each (saved in the adapter file) and
# `set_stage` decides which copies actually train in a stage.
MODULES_TO_SAVE = ["connector.memory_bank", "connector.adapters.image", "connector.adapters.reference",
                   "connector.adapters.keyphrases", "view_embedding"]


@dataclass(frozen=True)
class StageSpec:
    name: str  # "s1", "s2", "s3" or "joint"
    trainable: int  # the `set_stage` argument
    lora: bool
    num_train_epochs: float
    learning_rate: float
    # parameter groups trained beside `set_stage(trainable)`'s: RRG24's `lora` stage is stage 1's inputs and adapters
    # plus LoRA, which no S2D-Align stage is
    also_train: tuple = ()

    @property
    def modalities(self) -> tuple:
        return STAGE_MODALITIES[self.trainable]

    @property
    def required_columns(self) -> tuple:
        extra = {"reference": "reference", "keyphrases": "key_phrases"}
        return ("id", "image_paths", "report") + tuple(extra[m] for m in self.modalities if m in extra)


STAGES = {
    "s1": StageSpec("s1", 1, lora=False, num_train_epochs=8, learning_rate=3e-4),
    "s2": StageSpec("s2", 2, lora=True, num_train_epochs=5, learning_rate=1e-4),
    "s3": StageSpec("s3", 3, lora=True, num_train_epochs=3, learning_rate=5e-5),
    "joint": StageSpec("joint", 3, lora=True, num_train_epochs=16, learning_rate=3e-4),
    "align": StageSpec("align", 1, lora=False, num_train_epochs=1, learning_rate=1e-3),
    "lora": StageSpec("lora", 1, lora=True, num_train_epochs=3, learning_rate=2e-4, also_train=("lora_",)),
}
# A curriculum may be given by name; the names expand to stage lists.
NAMED_CURRICULA = {"s2d": "s1,s2,s3", "rrg24": "align,lora"}


def set_trainable(model, spec: StageSpec) -> int:
    """`model.set_stage(spec.trainable)` plus the spec's `also_train` groups; returns the trainable parameter count
    (`model` is the bare S2D-Align model, under PEFT its base model)."""
    count = model.set_stage(spec.trainable)
    for name, param in model.named_parameters():
        if not param.requires_grad and "original_module" not in name and any(g in name for g in spec.also_train):
            param.requires_grad_(True)
            count += param.numel()
    return count


def resolve_stage(stage) -> StageSpec:
    """1 / "1" / "s1" / "joint" -> its `StageSpec`."""
    name = str(stage).strip().lower()
    name = f"s{name}" if name.isdigit() else name
    if name not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of 1, 2, 3, {', '.join(STAGES)} (or a named "
                         f"curriculum: {', '.join(NAMED_CURRICULA)})")
    return STAGES[name]


def parse_curriculum(curriculum: str) -> list[StageSpec]:
    """'s1,s2,s3' -> specs. Any order of distinct stages ('s1', 's1,s2', 's1,s3', 's1,s3,s2', 's1,s2,s3'), 'joint'
    alone, or a name of `NAMED_CURRICULA` ('rrg24' = 'align,lora')."""
    key = str(curriculum).strip().lower()
    names = [part.strip().lower() for part in NAMED_CURRICULA.get(key, key).split(",") if part.strip()]
    specs = [resolve_stage(name) for name in names]
    if not specs:
        raise ValueError(f"empty curriculum {curriculum!r}")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"curriculum {curriculum!r} repeats a stage")
    if any(s.name == "joint" for s in specs) and len(specs) > 1:
        raise ValueError(f"'joint' trains every signal at once and is a curriculum of its own, got {curriculum!r}")
    return specs


def default_bf16() -> bool:
    """TRL defaults to bf16, which transformers refuses on a machine without a bf16 GPU unless `use_cpu` is set."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def sft_defaults(spec: StageSpec) -> dict:
    """`SFTConfig` values of a stage before the user's overrides."""
    defaults = {
        "num_train_epochs": spec.num_train_epochs,  # paper
        "learning_rate": spec.learning_rate,  # paper
        "optim": "adamw_torch",  # paper (AdamW)
        "lr_scheduler_type": "cosine",  # paper
        "warmup_steps": 0.03,  # ours: 3% linear warmup
        "logging_steps": 10,  # ours
        "bf16": default_bf16(),  # ours: TRL's default where the hardware has bf16
        "report_to": "none",  # ours: no tracker unless asked
        "save_total_limit": 2,  # ours: the newest two checkpoints (a resume needs one; one spare if a save dies)
        # ours: every trainable parameter is used at every step (a stage is all-or-nothing for its inputs)
        "ddp_find_unused_parameters": False,
    }
    if not spec.lora:
        # ours: non-reentrant activation checkpointing for stage 1 (no PEFT, so TRL's reentrant workaround for
        # PEFT + ZeRO-3 does not apply); under ZeRO-3 it needs DeepSpeed's fix for frozen parameters recomputed in a
        # checkpointed block (deepspeedai/DeepSpeed#8148, see setup.cfg). PEFT stages keep TRL's choice.
        defaults["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return defaults


# Not overridable: the rows carry their own columns (images, reference, key phrases) into our collator.
SFT_FORCED = {"remove_unused_columns": False, "dataset_kwargs": {"skip_prepare_dataset": True}}


def lora_config(spec: StageSpec, r: int = 16, alpha: int = 32, dropout: float = 0.05):
    """LoRA on the LLM's linear layers, and the stage's trainable adapters in `modules_to_save`.

    Only the adapters this stage trains are wrapped (stage 2 leaves out the key-phrase adapter): a wrapped copy that
    `set_stage` freezes would be dropped by ZeRO-3's save (it gathers trainable parameters only) and PEFT's adapter
    save then fails on the missing keys. The merged model is the same either way."""
    from peft import LoraConfig

    trained = [m for m in MODULES_TO_SAVE if any(m.startswith(g) for g in _stage_groups(spec.trainable))]
    # a string target is a full-match regex: the LLM's linear layers only, never the encoders or the adapters
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                      modules_to_save=trained, bias="none")


def _stage_groups(stage: int) -> tuple:
    from modeling_s2d import STAGE_TRAINABLE

    return STAGE_TRAINABLE[stage]


def apply_section(model_path, dataset_path, model, processor) -> str:
    """Carry the dataset's report section (`prepare_summary.json`, "findings" when unrecorded) into the model's config
    and, for the impression, into the processor's default prompt; returns it. A trained stage folder (it has
    `s2d_stage.json`) keeps its section: continuing it on the other section's data is an error, since RRG24's recipe,
    and ours, is one model per section."""
    from pathlib import Path

    from processing_s2d import DEFAULT_PROMPT

    from ..data.prepare import dataset_section

    section = dataset_section(dataset_path)
    if (Path(model_path) / "s2d_stage.json").is_file() and model.config.section != section:
        raise ValueError(f"{model_path} was trained to write the {model.config.section} section but dataset "
                         f"{dataset_path} holds the {section} section; train one model per section")
    model.config.section = section
    if section != "findings" and processor.prompt == DEFAULT_PROMPT:
        processor.prompt = DEFAULT_PROMPT.replace("the findings section", f"the {section} section")
    return section
