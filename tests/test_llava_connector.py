"""The all-patch `llava` connector (LLaVA-1.5 / RRG24-style peer): one LLM token per patch, a 2-layer GELU MLP."""

import pytest
import torch
from torch.nn import functional as F

from s2d_align.tiny import build_tiny
from s2d_align.training.collator import S2DAlignCollator
from conftest import adamw_steps

REPORTS = ["The heart is normal in size. The lungs are clear.", "Small left pleural effusion. No pneumothorax."]
IMAGE_SIZE, PATCH = 64, 8  # build_tiny's defaults: an 8 x 8 patch grid
PATCHES = (IMAGE_SIZE // PATCH) ** 2


@pytest.fixture(scope="module")
def llava():
    model, processor = build_tiny(vocab_size=512, seed=0, connector="llava")
    model.eval()
    return model, processor


def _llm_inputs(model, inputs):
    """The `inputs_embeds` the LLM body receives (captured by a forward pre-hook)."""
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()
    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["embeds"]


def test_prefix_is_the_patch_grid_per_present_view(llava, radiographs):
    model, processor = llava
    assert model.config.image_tokens_per_view == PATCHES == processor.image_tokens_per_view
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert counts == [PATCHES, 2 * PATCHES]  # a one-view study gets no placeholders for its padded view
    embeds = _llm_inputs(model, inputs)
    # independent reference: LLaVA-1.5's projector Linear -> GELU -> Linear on each patch token + its view embedding
    with torch.no_grad():
        patches = model.model.vision_tower(pixel_values=inputs["pixel_values"][1]).last_hidden_state[:, 1:]
        tokens = patches + model.model.view_embedding.weight[:2, None]
        first, second = model.model.connector.adapters["image"].mlp[0], model.model.connector.adapters["image"].mlp[2]
        expected = F.linear(F.gelu(F.linear(tokens.reshape(-1, tokens.shape[-1]), first.weight, first.bias)),
                            second.weight, second.bias)
    placed = embeds[1][inputs["input_ids"][1] == model.config.image_token_id]
    torch.testing.assert_close(placed, expected, atol=1e-5, rtol=1e-4)
    assert len(model.model.connector.adapters["image"].mlp) == 3  # exactly two linear layers, whatever mlp_depth


def test_the_pooling_connectors_keep_num_memory_queries(radiographs):
    model, processor = build_tiny(vocab_size=512, seed=0, connector="mlp")
    assert model.config.image_tokens_per_view is None and processor.image_tokens_per_view is None
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert counts == [model.config.num_memory_queries] * 2


def test_a_study_does_not_depend_on_its_batch(llava, radiographs):
    """A one-view study batched with a two-view one gives the logits it gives alone (right padding, causal LLM)."""
    model, processor = llava
    with torch.no_grad():
        alone = model(**processor(images=[radiographs[:1]], suffix=REPORTS[:1])).logits[0]
        batched = model(**processor(images=[radiographs[:1], radiographs], suffix=REPORTS)).logits[0]
    torch.testing.assert_close(batched[: alone.shape[0]], alone, atol=1e-4, rtol=1e-4)


def test_a_wrong_placeholder_count_is_a_clear_error(llava, radiographs):
    model, processor = llava
    inputs = processor(images=[radiographs], suffix=REPORTS[:1])
    broken = inputs["input_ids"].clone()
    broken[0, (broken[0] == model.config.image_token_id).nonzero()[0, 0]] = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="placeholder mismatch for image.*present views only"):
        model(**{**inputs, "input_ids": broken})


def test_stage1_trains_the_projector_and_lowers_the_loss(radiographs):
    model, processor = build_tiny(vocab_size=512, seed=3, connector="llava")
    model.set_stage(1)
    model.train()
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    llm_before = model.model.language_model.layers[0].mlp.up_proj.weight.clone()

    def projector_has_gradients(model):
        projector = model.model.connector.adapters["image"].mlp
        assert projector[0].weight.grad.abs().sum() > 0 and projector[2].weight.grad.abs().sum() > 0

    losses = adamw_steps(model, inputs, 4, on_first_backward=projector_has_gradients)
    assert losses[-1] < losses[0]
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, llm_before)  # LLM frozen


def test_batched_generation_equals_per_study(llava, radiographs):
    model, processor = llava
    studies = [radiographs[:1], radiographs]  # prompts of different lengths: the one-view row is left-padded
    batch = processor(images=studies)
    out = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    batched = out[:, batch["input_ids"].shape[1]:]
    for i, views in enumerate(studies):
        single = processor(images=[views])
        alone = model.generate(**single, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert alone[0, single["input_ids"].shape[1]:].tolist() == batched[i].tolist()


def test_cached_features_collate_like_the_processor(llava, radiographs):
    """The feature-cache collator writes the same per-view placeholders as the processor."""
    model, processor = llava
    inputs = processor(images=[radiographs[:1], radiographs], suffix=REPORTS)
    text = S2DAlignCollator(processor)._text(REPORTS, ("image",), [1, 2])
    assert torch.equal(text["input_ids"], inputs["input_ids"]) and torch.equal(text["labels"], inputs["labels"])


def test_processor_round_trips_the_placeholder_count(llava, tmp_path):
    from processing_s2d import S2DAlignProcessor

    _, processor = llava
    processor.save_pretrained(tmp_path)
    assert S2DAlignProcessor.from_pretrained(tmp_path).image_tokens_per_view == PATCHES
