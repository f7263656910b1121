"""UDEM's components as a build (issue 13): a DINOv3 ViT image encoder (CLS + register tokens before the patch grid)
and a GPT-2 decoder, composed by `s2d build` (`build_from_components`) with the real MiniLM-L6 text encoder and the
all-patch `llava` connector. Tiny random DINOv3 and GPT-2 are made in code and saved as checkpoints; nothing is
downloaded (the public ones: `facebook/dinov3-vitb16-pretrain-lvd1689m`, `openai-community/gpt2`)."""

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel, GPT2Config, GPT2LMHeadModel

from conftest import adamw_steps
from s2d_align.build import build_from_components
from s2d_align.tiny import iu_xray_reports, minilm_path, train_report_tokenizer

REGISTERS, IMAGE, PATCH = 4, 64, 16
REPORTS = ["The heart is normal in size. No pleural effusion.", "Small left pleural effusion. No pneumothorax."]


@pytest.fixture(scope="module")
def udem(tmp_path_factory):
    root = tmp_path_factory.mktemp("udem")
    vision = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=PATCH, image_size=IMAGE, num_register_tokens=REGISTERS)
    torch.manual_seed(0)
    DINOv3ViTModel(vision).save_pretrained(root / "dinov3")
    tokenizer = train_report_tokenizer(iu_xray_reports()[:400], vocab_size=400)
    gpt2 = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2, n_positions=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    out = build_from_components(vision=str(root / "dinov3"), text_encoder=str(minilm_path()), llm=str(root / "gpt2"),
                                out_dir=str(root / "built"), connector="llava", num_memory_queries=4, max_views=1)
    from modeling_s2d import S2DAlignForConditionalGeneration
    from processing_s2d import S2DAlignProcessor

    return S2DAlignForConditionalGeneration.from_pretrained(out), S2DAlignProcessor.from_pretrained(out), out


def test_the_connector_gets_the_patch_grid_without_cls_and_registers(udem, radiographs):
    model, processor, _ = udem
    assert model.config.vision_config.model_type == "dinov3_vit"
    assert model.config.text_config.model_type == "gpt2"
    pixels = processor(images=[radiographs[:1]])["pixel_values"]
    tower = model.model.vision_tower(pixel_values=pixels[:, 0]).last_hidden_state
    grid = (IMAGE // PATCH) ** 2
    assert tower.shape[1] == 1 + REGISTERS + grid  # DINOv3's own layout: CLS, registers, patches
    patches = model.model.encode_images(pixels)
    assert patches.shape[2] == grid and torch.equal(patches[:, 0], tower[:, 1 + REGISTERS:])
    # the llava prefix is one LLM token per patch: the processor writes that many image placeholders
    ids = processor(images=[radiographs[:1]])["input_ids"]
    assert int((ids == model.config.image_token_id).sum()) == grid == model.config.image_tokens_per_view


def test_a_dinov3_gpt2_build_trains_a_step(udem, radiographs):
    model, processor, _ = udem
    model.set_stage(1)
    model.train()
    inputs = processor(images=[radiographs[:1], radiographs[1:]], suffix=REPORTS)
    gpt2_before = model.model.language_model.h[0].attn.c_attn.weight.clone()
    losses = adamw_steps(model, inputs, 4)
    assert losses[-1] < losses[0]
    assert torch.equal(model.model.language_model.h[0].attn.c_attn.weight, gpt2_before)  # stage 1: LLM frozen
    model.eval()


def test_lora_targets_gpt2s_conv1d_layers_only(udem):
    from peft import get_peft_model

    from s2d_align.training.stages import lora_config, resolve_stage

    model, _, _ = udem
    peft_model = get_peft_model(model, lora_config(resolve_stage("s2")))
    wrapped = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters()
               if ".lora_A" in name}
    assert wrapped == {"c_attn", "c_proj", "c_fc"}
    assert all("language_model" in name for name, _ in peft_model.named_parameters() if ".lora_A" in name)
    peft_model.unload()  # back to the plain model for the other tests


def test_generation_with_and_without_kv_cache_agree_and_a_reload_keeps_the_logits(udem, radiographs):
    from modeling_s2d import S2DAlignForConditionalGeneration

    model, processor, folder = udem
    model.eval()
    batch = processor(images=[radiographs[:1], radiographs[1:]])
    cached = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    uncached = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    model.save_pretrained(folder / "again")
    reloaded = S2DAlignForConditionalGeneration.from_pretrained(folder / "again").eval()
    with torch.inference_mode():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-6)
