"""The model: stage trainability, the shared memory bank, placeholders, batched generation."""

import pytest
import torch

from modeling_s2d import S2DAlignForConditionalGeneration
from s2d_align.tiny import build_tiny

REPORTS = ["The heart is normal in size. The lungs are clear.", "Small left pleural effusion. No pneumothorax."]
STAGE_GROUPS = {  # the paper's stages, written out independently of modeling_s2d.STAGE_TRAINABLE
    1: {"memory_bank", "image", "view_embedding"},
    2: {"memory_bank", "image", "view_embedding", "reference", "lora"},
    3: {"memory_bank", "image", "view_embedding", "reference", "keyphrases", "lora"},
}


def _group(name: str) -> str:
    if "lora_" in name:
        return "lora"
    if "connector.memory_bank" in name:
        return "memory_bank"
    if "connector.adapters." in name:
        return name.split("connector.adapters.")[1].split(".")[0]
    if "view_embedding" in name:
        return "view_embedding"
    return "frozen:" + name.split(".")[1]


def _with_lora(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)")
    return get_peft_model(model, config)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_only_the_stage_parameters_receive_gradients(tiny, radiographs, stage):
    model, processor = build_tiny(vocab_size=512, seed=1)
    peft_model = _with_lora(model) if stage > 1 else model
    model.set_stage(stage)
    model.train()
    inputs = processor(images=radiographs, suffix=REPORTS, references=["Lungs are clear.", "Heart is enlarged."],
                       key_phrases=[["no pneumothorax"], ["left pleural effusion", "no pneumothorax"]])
    peft_model(**inputs).loss.backward()
    with_grad = {_group(n) for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {_group(n) for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == STAGE_GROUPS[stage]
    assert trainable == STAGE_GROUPS[stage]
    # the encoders stay in eval mode (no dropout) even though the model is in training mode
    assert not model.model.vision_tower.training and not model.model.text_encoder.training
    assert model.model.connector.training


def test_memory_bank_is_one_parameter_under_sma_and_separate_under_sma_unshared():
    shared, _ = build_tiny(vocab_size=512, connector="sma")
    banks = [n for n, _ in shared.named_parameters() if "memory_bank" in n]
    assert banks == ["model.connector.memory_bank.weight"]
    unshared, _ = build_tiny(vocab_size=512, connector="sma_unshared")
    banks = sorted(n for n, _ in unshared.named_parameters() if "memory_bank" in n)
    assert banks == [f"model.connector.adapters.{m}.memory_bank.weight" for m in ("image", "keyphrases", "reference")]
    weights = [p for n, p in unshared.named_parameters() if "memory_bank" in n]
    assert len({w.data_ptr() for w in weights}) == 3


def test_the_shared_memory_bank_receives_gradient_from_every_adapter(radiographs):
    model, processor = build_tiny(vocab_size=512, connector="sma")
    model.set_stage(3)
    connector = model.model.connector
    features = torch.randn(2, 5, model.config.text_encoder_config.hidden_size)
    valid = torch.ones(2, 5, dtype=torch.bool)
    for modality in ("reference", "keyphrases"):
        connector.memory_bank.weight.grad = None
        out = connector(modality, features, valid)
        (out * torch.randn_like(out)).sum().backward()  # a plain sum of a LayerNorm output has zero gradient
        assert connector.memory_bank.weight.grad.abs().sum() > 0, modality


@pytest.mark.parametrize("connector", ["sma", "sma_unshared", "sma_msa", "mlp", "qformer"])
def test_every_connector_yields_num_memory_queries_tokens(connector, radiographs):
    model, processor = build_tiny(vocab_size=512, connector=connector)
    inputs = processor(images=[radiographs, radiographs[:1]], suffix=REPORTS)
    out = model(**inputs)
    assert out.context_embeddings["image"].shape == (2, model.config.num_memory_queries,
                                                     model.config.text_config.hidden_size)
    assert torch.isfinite(out.loss)


def test_placeholder_count_mismatch_is_a_clear_error(tiny, radiographs):
    model, processor = tiny
    inputs = processor(images=radiographs, suffix=REPORTS)
    image_id = model.config.image_token_id
    broken = inputs["input_ids"].clone()
    first = (broken[0] == image_id).nonzero()[0, 0]
    broken[0, first] = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="placeholder mismatch for image"):
        model(**{**inputs, "input_ids": broken})
    reference_id = model.config.reference_token_id
    broken = inputs["input_ids"].clone()
    broken[0, first + model.config.num_memory_queries] = reference_id  # a prompt word right after the image run
    with pytest.raises(ValueError, match="reference placeholder tokens but no reference inputs"):
        model(**{**inputs, "input_ids": broken})


def test_cached_image_features_give_the_same_logits_as_pixels(tiny, radiographs):
    model, processor = tiny
    inputs = processor(images=[radiographs, radiographs[1:]], suffix=REPORTS)
    with torch.no_grad():
        from_pixels = model(**inputs).logits
        features = model.model.encode_images(inputs["pixel_values"], inputs["view_mask"])
        cached = {k: v for k, v in inputs.items() if k != "pixel_values"}
        from_cache = model(**cached, image_features=features).logits
    torch.testing.assert_close(from_pixels, from_cache)


def test_absent_views_do_not_change_the_study_embedding(tiny, radiographs):
    """A one-view study padded to two views gives the same adapter output as the same study alone."""
    model, processor = tiny
    with torch.no_grad():
        alone = model(**processor(images=[radiographs[:1]], suffix=REPORTS[:1])).context_embeddings["image"]
        padded = model(**processor(images=[radiographs[:1], radiographs], suffix=REPORTS)).context_embeddings["image"]
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_batched_left_padded_greedy_generation_equals_per_sample(tiny, radiographs):
    model, processor = tiny
    studies = [radiographs[:1], radiographs, [radiographs[1]]]
    batch = processor(images=studies)
    # shift the first study right by 3 pad columns: left padding must not change what it generates
    pad = processor.tokenizer.pad_token_id
    batch["input_ids"] = torch.cat([torch.full((3, 3), pad), batch["input_ids"]], 1)
    batch["attention_mask"] = torch.cat([torch.zeros(3, 3, dtype=torch.long), batch["attention_mask"]], 1)
    batch["input_ids"][1:, :3] = batch["input_ids"][1:, 3:6]  # rows 1, 2: no padding, 3 extra prompt tokens...
    batch["attention_mask"][1:, :3] = 1  # ...so row 0 is the only left-padded one
    out = model.generate(**batch, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    batched = processor.batch_decode(out, prompt_length=batch["input_ids"].shape[1])
    for i, views in enumerate(studies):
        single = {k: v[i: i + 1] for k, v in batch.items()}
        if i == 0:  # drop the padding entirely
            single = {k: (v[:, 3:] if k in ("input_ids", "attention_mask") else v) for k, v in single.items()}
        single["pixel_values"] = single["pixel_values"][:, : len(views)]
        single["view_mask"] = single["view_mask"][:, : len(views)]
        alone = model.generate(**single, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        assert processor.batch_decode(alone, prompt_length=single["input_ids"].shape[1])[0] == batched[i]
    assert len(set(batched)) > 1, "different images should give different random-model outputs"


def test_generate_strips_the_prompt_with_or_without_prompt_length(tiny, radiographs):
    model, processor = tiny
    batch = processor(images=[radiographs[:1]])
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    by_length = processor.batch_decode(out, prompt_length=batch["input_ids"].shape[1])
    by_marker = processor.batch_decode(out)
    assert by_length == by_marker
    new_tokens = out[0, batch["input_ids"].shape[1]:]
    assert by_length[0] == processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_set_stage_rejects_unknown_stages(tiny):
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        tiny[0].set_stage(4)


def test_class_is_a_direct_generation_mixin():
    from transformers import GenerationMixin

    assert GenerationMixin in S2DAlignForConditionalGeneration.__bases__
    assert S2DAlignForConditionalGeneration.can_generate()


def test_generation_never_emits_the_placeholder_tokens(tiny, radiographs):
    import copy

    model, processor = tiny
    biased = copy.deepcopy(model)
    placeholders = sorted(model.config.placeholder_token_ids.values())
    head = torch.nn.Linear(biased.lm_head.in_features, biased.lm_head.out_features, bias=True)
    head.weight.data.copy_(biased.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[placeholders] = torch.tensor([30.0, 20.0, 10.0])  # <image> first, then the others
    biased.lm_head = head
    batch = processor(images=[radiographs[:1]])
    with torch.no_grad():  # the head really prefers the placeholders: unsuppressed, <image> is the greedy choice
        assert int(biased(**batch).logits[0, -1].argmax()) == placeholders[0]
    for kwargs in ({}, {"suppress_tokens": [processor.tokenizer.eos_token_id]}, {"num_beams": 2}):
        out = biased.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kwargs)
        new = out[0, batch["input_ids"].shape[1]:].tolist()
        assert len(new) == 6 and not set(new) & set(placeholders), (kwargs, new)
        if "suppress_tokens" in kwargs:  # the caller's own suppressed tokens stay suppressed
            assert processor.tokenizer.eos_token_id not in new
