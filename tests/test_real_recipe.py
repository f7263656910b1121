"""The README's real-model recipe, end to end, as a user runs it: every step a command in its own process.

`s2d build` from component checkpoints (tiny Dinov2 / BERT / Llama folders this test saves, standing in for Rad-DINO,
CXR-BERT and Vicuna) -> `s2d prepare --dataset mimic_cxr --mimic-root` on a MIMIC-CXR-JPG-shaped layout (studies of
1 to 4 views, several section-header variants) -> `accelerate launch train_sft.py --curriculum s1,s2,s3` with
checkpoints written every step -> `s2d generate` on the test studies -> `s2d eval` -> `s2d push --dry-run` on the last
stage's folder. Every step must exit 0 with no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAW_MIMIC = Path(__file__).resolve().parent / "fixtures" / "data_mimic_raw"


def _save_components(root: Path) -> dict[str, Path]:
    """Tiny component checkpoints laid out as on the Hub: an image encoder with its preprocessor, a text encoder with
    its tokenizer, a causal LM with its tokenizer (no placeholder tokens: `s2d build` adds them)."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertModel, Dinov2Config, Dinov2Model, LlamaConfig,
                              LlamaForCausalLM, PreTrainedTokenizerFast)

    from s2d_align.tiny import iu_xray_reports, minilm_path, tiny_image_processor, train_report_tokenizer

    paths = {name: root / name for name in ("vision", "text", "llm")}
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(paths["vision"])
    tiny_image_processor(32).save_pretrained(paths["vision"])
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
              add_pooling_layer=False).save_pretrained(paths["text"])
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(paths["text"])
    trained = train_report_tokenizer(iu_xray_reports()[:400], vocab_size=400)
    # a plain Llama-style tokenizer: unk/bos/eos, no pad token and no placeholders, as Vicuna's
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                     ).save_pretrained(paths["llm"])
    tokenizer.save_pretrained(paths["llm"])
    return paths


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    where = " ".join(args[:4])
    assert result.returncode == 0, f"{where} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr + result.stdout, f"{where}:\n{result.stderr[-4000:]}"
    return result


def s2d(*args: str) -> list[str]:
    return [sys.executable, "-m", "s2d_align.cli", *args]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipe")
    components = _save_components(work / "hub")
    mimic = work / "mimic-cxr-jpg"
    shutil.copytree(RAW_MIMIC, mimic, ignore=shutil.ignore_patterns("*.py"))
    return work, components, mimic


def test_readme_real_model_recipe(recipe):
    work, hub, mimic = recipe
    init, data, train = work / "out/init", work / "out/data/mimic", work / "out/train"
    # 1. compose one folder from the three checkpoints (s2d build's default max_views=2)
    _run(s2d("build", "--vision", str(hub["vision"]), "--text-encoder", str(hub["text"]), "--llm", str(hub["llm"]),
             "--num-memory-queries", "8", "--out", str(init)), work)
    generation = json.loads((init / "generation_config.json").read_text())
    processor_config = json.loads((init / "processor_config.json").read_text())
    assert generation["max_new_tokens"] == processor_config["max_report_tokens"] + 1
    config = json.loads((init / "config.json").read_text())
    placeholders = sorted(config[k] for k in ("image_token_id", "reference_token_id", "keyphrase_token_id"))
    assert generation["suppress_tokens"] == placeholders

    # 2. data: raw MIMIC-CXR-JPG layout; one study's image is missing, so --missing-images skip
    out = _run(s2d("prepare", "--dataset", "mimic_cxr", "--mimic-root", str(mimic), "--reference", "same_patient",
                   "--model", str(init), "--missing-images", "skip", "--out", str(data)), work).stdout
    summary = json.loads((data / "prepare_summary.json").read_text())
    assert summary["counts"] == {"train": 6, "validation": 1, "test": 2}
    assert summary["views"]["images_per_study"] == {"1": 5, "2": 1, "3": 1, "4": 2}
    assert summary["views"]["max_views"] == 2 and summary["views"]["views_dropped"] == 5
    assert summary["targets"]["counted_in"].startswith("LLM tokens")
    assert "no stage-2 reference" in out and "views: 5 images dropped" in out

    # 3. the curriculum, checkpoints written every step
    result = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "accelerate_configs" / "single_gpu.yaml"), str(REPO / "train_sft.py"),
                   "--model_name_or_path", str(init), "--dataset_path", str(data), "--output_dir", str(train),
                   "--curriculum", "s1,s2,s3", "--max_steps", "2", "--per_device_train_batch_size", "3",
                   "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--use_cpu", "true",
                   "--bf16", "false", "--dataloader_num_workers", "0", "--report_to", "none"], REPO)
    assert f"model saved to {train / 's3'}" in result.stdout
    for stage in ("s1", "s2", "s3"):
        assert json.loads((train / stage / "s2d_stage.json").read_text())["complete"]
        # wherever the stage keeps them (inside or beside its folder)
        written = [p for p in train.rglob("checkpoint-*")
                   if p.is_dir() and any(stage in part for part in p.relative_to(train).parts)]
        assert written, f"stage {stage} wrote no checkpoint"
    assert json.loads((train / "s3" / "generation_config.json").read_text())["suppress_tokens"] == placeholders

    # 4. generate on the test studies (their ids and view positions come from the dataset), then evaluate
    preds, refs = work / "preds.jsonl", work / "refs.jsonl"
    _run(s2d("generate", "--model", str(train / "s3"), "--dataset", str(data), "--split", "test",
             "--references-out", str(refs), "--out", str(preds)), work)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["51000004", "58000001"]
    assert max(len(r["images"]) for r in rows) == 2
    # METEOR starts a Java VM (the slowest part of this step; tests/test_metrics_nlg.py covers it)
    _run(s2d("eval", "--predictions", str(preds), "--references", str(refs), "--out", str(work / "eval"),
             "--ce-convention", "llmrg4", "--clean", "mimic_cxr", "--no-meteor"), work)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["n_reports"] == 2 and metrics["settings"]["ce_convention"] == "llmrg4"
    assert 0 <= metrics["ce"]["f1"] <= 1 and 0 <= metrics["nlg"]["BLEU_4"] <= 1

    # 5. publish (dry run): exactly the model files of the stage folder, no checkpoint or optimizer state
    listed = _run(s2d("push", "--model", str(train / "s3"), "--repo-id", "you/s2d-align-mimic", "--dry-run"),
                  work).stdout
    files = [line.strip() for line in listed.splitlines()[1:]]
    assert "model.safetensors" in files and "config.json" in files and "modeling_s2d.py" in files
    assert not [f for f in files if "checkpoint" in f or f.endswith((".pt", ".pth", ".bin"))]
