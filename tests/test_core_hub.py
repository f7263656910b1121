"""Saving and reloading: remote code in a fresh process, safetensors only, and the component builder."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from s2d_align.tiny import minilm_path, tiny_image_processor, train_report_tokenizer

REMOTE_FILES = {"configuration_s2d.py", "modeling_s2d.py", "processing_s2d.py"}

# Runs in a process that never imports s2d_align: only the saved folder and trust_remote_code.
RELOAD = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
    folder, images = sys.argv[1], json.loads(sys.argv[2])
    assert "s2d_align" not in sys.modules
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    plain = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "s2d_align" not in sys.modules and "configuration_s2d" not in sys.modules
    batch = processor(images=images, suffix=["The lungs are clear."] * len(images))
    with torch.no_grad():
        logits = model(**batch).logits
    gen = processor(images=images)
    out = model.generate(**gen, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    print(json.dumps({"logits": logits.flatten()[:4096].tolist(), "text": processor.batch_decode(out),
                      "auto_model_class": type(plain).__name__, "has_generate": hasattr(plain, "generate"),
                      "model_module": type(model).__module__}))
""")


def _reload_in_fresh_process(folder: Path, images: list) -> dict:
    result = subprocess.run([sys.executable, "-c", RELOAD, str(folder), json.dumps(images)], capture_output=True,
                            text=True, cwd=folder.parent, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                               "HOME": str(folder.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_folder_reloads_through_remote_code_with_identical_outputs(tmp_path, tiny, radiographs):
    model, processor = tiny
    folder = tmp_path / "s2d-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert {f for f in files if f.endswith(".py")} == REMOTE_FILES
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == auto_map["AutoModelForImageTextToText"] == \
        "modeling_s2d.S2DAlignForConditionalGeneration"

    reloaded = _reload_in_fresh_process(folder, radiographs)
    batch = processor(images=radiographs, suffix=["The lungs are clear."] * 2)
    gen = processor(images=radiographs)
    with torch.no_grad():
        logits = model(**batch).logits.flatten()[:4096]
    out = model.generate(**gen, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert reloaded["model_module"].startswith("transformers_modules")  # really the remote code
    assert reloaded["auto_model_class"] == "S2DAlignForConditionalGeneration" and reloaded["has_generate"]
    torch.testing.assert_close(torch.tensor(reloaded["logits"]), logits, rtol=0, atol=0)
    assert reloaded["text"] == processor.batch_decode(out)


def test_processor_settings_round_trip(tmp_path, tiny):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    from processing_s2d import S2DAlignProcessor

    again = S2DAlignProcessor.from_pretrained(tmp_path)
    for name in ("num_memory_queries", "max_views", "prompt", "answer_marker", "max_report_tokens"):
        assert getattr(again, name) == getattr(processor, name), name
    assert again.text_encoder_tokenizer("no effusion")["input_ids"] == \
        processor.text_encoder_tokenizer("no effusion")["input_ids"]
    assert again.tokenizer("clear lungs")["input_ids"] == processor.tokenizer("clear lungs")["input_ids"]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """Tiny component checkpoints saved by the test itself: Dinov2, Llama + tokenizer; MiniLM is real."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, patch_size=8, image_size=32))
    vision.save_pretrained(root / "vision")
    tiny_image_processor(32).save_pretrained(root / "vision")
    tokenizer = train_report_tokenizer(["The lungs are clear.", "No pleural effusion."] * 20, vocab_size=300)
    tokenizer = type(tokenizer)(tokenizer_object=tokenizer._tokenizer.__class__.from_str(
        tokenizer._tokenizer.to_str()), unk_token="<unk>", bos_token="<s>", eos_token="</s>")  # no pad, like Vicuna
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root, vision, llm


def test_builder_composes_component_checkpoints(tmp_path, components, radiographs):
    from transformers import BertModel

    from s2d_align.build import build_from_components

    root, vision, llm = components
    out = build_from_components(vision=str(root / "vision"), text_encoder=str(minilm_path()),
                                llm=str(root / "llm"), out_dir=str(tmp_path / "built"), num_memory_queries=4,
                                adapter_num_heads=4)
    reloaded = _reload_in_fresh_process(out, radiographs)
    assert reloaded["auto_model_class"] == "S2DAlignForConditionalGeneration"

    from transformers import AutoModelForImageTextToText, AutoProcessor

    import s2d_align  # noqa: F401  (local registration)

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    for name, tensor in vision.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor, rtol=0, atol=0)
    minilm = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    for name, tensor in minilm.state_dict().items():
        torch.testing.assert_close(model.model.text_encoder.state_dict()[name], tensor, rtol=0, atol=0)
    old_vocab = llm.config.vocab_size
    embed = model.get_input_embeddings().weight
    torch.testing.assert_close(embed[:old_vocab], llm.get_input_embeddings().weight, rtol=0, atol=0)
    assert embed.shape[0] % 64 == 0 and embed.shape[0] >= old_vocab + 3
    ids = processor.placeholder_token_ids
    assert ids == {"image": model.config.image_token_id, "reference": model.config.reference_token_id,
                   "keyphrases": model.config.keyphrase_token_id}
    assert processor.tokenizer.pad_token is not None
    assert model.config.text_encoder_config.hidden_size == 384  # keys/values projected to d_v=32
