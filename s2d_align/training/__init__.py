"""Training: the three-stage S2D-Align curriculum with TRL's `SFTTrainer` (optionally under DeepSpeed ZeRO-2/3).

Python API (the script `train_sft.py` is a thin layer over it):

    run_stage(model_path, dataset_path, output_dir, stage, **sft_overrides) -> str     # one stage
    run_curriculum(model_path, dataset_path, output_dir, curriculum="s1,s2,s3", **overrides) -> str

A stage's output folder:

    output_dir/
      config.json, model.safetensors (or shards + index), generation_config.json   the merged model
      configuration_s2d.py, modeling_s2d.py, processing_s2d.py                     remote code
      processor_config.json, tokenizer*.json, text_encoder_tokenizer/             the processor
      log_history.json, training_curve.png                                        the Trainer's log, loss vs step
      training_args.json, s2d_stage.json                                          the SFTConfig; stage summary
      adapter/          (stages with LoRA) the trained LoRA + adapters before merging (PEFT format)
    output_dir-checkpoints/   beside it: Trainer checkpoints (checkpoint-N/, the newest `save_total_limit`), what
                              `resume` continues from; a stage-1 checkpoint holds only the trainable tensors

It loads with `AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True)` in a process that never
imports this package. A curriculum writes `output_dir/<stage>/` per stage and `output_dir/curriculum.json`.

Saving (see `export.py`): stages with LoRA save the adapter with `trainer.save_model()` (under ZeRO-3 it gathers the
partitioned weights), then rank 0 loads the stage input whole, merges the adapter in float32 and `save_pretrained`s
model and processor in the input's dtype. Stage 1 (no LoRA) saves the whole model with `trainer.save_model()`.

Frozen-feature cache (see `features.py`): `<dataset_path>/feature_cache/<key>/<split>/shard-NNNNN.safetensors`, the key
hashing the encoder configs, a SHA-256 of the encoder weights, the image processor, the text-encoder tokenizer and
the storage dtype; each shard carries a fingerprint of its rows (ids, image files, reference texts).
"""

from .collator import EpochCallback, S2DAlignCollator, STAGE_MODALITIES, sample_key_phrases
from .features import FeatureCache, prepare_feature_cache
from .run import run_curriculum, run_stage
from .stages import LORA_TARGETS, MODULES_TO_SAVE, STAGES, parse_curriculum, resolve_stage

__all__ = ["run_stage", "run_curriculum", "S2DAlignCollator", "EpochCallback", "STAGE_MODALITIES",
           "sample_key_phrases", "FeatureCache", "prepare_feature_cache", "STAGES", "LORA_TARGETS",
           "MODULES_TO_SAVE", "parse_curriculum", "resolve_stage"]
