"""`anatomical_bias: masks` (issue 13): UDEM's layer-wise anatomical attention as a configuration.

The bias is checked against an independent computation (SciPy's Gaussian filter on a NumPy block mean of the mask),
placed where it belongs in the LLM's attention logits (text queries -> image-patch keys, every layer), shown to move
attention mass into the mask on a fixed input, and shown to hold under SDPA, eager attention and KV-cached generation.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from modeling_s2d import anatomical_bias_maps, anatomical_layer_sigmas
from s2d_align.tiny import build_tiny

SIZE = 64  # build_tiny's encoder input: an 8 x 8 grid of 8-px patches
GRID = 8
REPORTS = ["The heart is normal in size. The lungs are clear.", "Small left pleural effusion. No pneumothorax."]


def _mask_array(seed: int, size: int = SIZE) -> np.ndarray:
    """A lung-like mask: two ellipses, off-centre so that the two sides differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size), bool)
    for cx in (0.3, 0.68):
        cx += rng.uniform(-0.05, 0.05)
        out |= ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / rng.uniform(0.25, 0.35)) ** 2 < 1
    return out


def _image(seed: int, size: int = SIZE) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8))


def _reference_maps(mask: np.ndarray, grid: int, layers: int, scale: float) -> np.ndarray:
    """The documented function, computed independently: block mean per patch, SciPy's reflect-mode Gaussian filter
    at each layer's sigma, min-max to [0, 1], times scale. (layers, grid * grid)"""
    patch = mask.shape[0] // grid
    cells = mask.astype(np.float64).reshape(grid, patch, grid, patch).mean(axis=(1, 3))
    out = []
    for sigma in [(layers - layer + 1) / 3 for layer in range(layers)]:
        smooth = gaussian_filter(cells, sigma, mode="reflect", truncate=3.0)
        out.append(scale * (smooth - smooth.min()) / (smooth.max() - smooth.min()))
    return np.stack(out).reshape(layers, -1)


@pytest.mark.parametrize("grid,layers", [(8, 3), (37, 32)])
def test_the_bias_is_the_documented_function_of_the_smoothed_masks(grid, layers):
    """At every patch and layer, for the demo's grid and for Rad-DINO's 37 x 37 grid under a 32-layer LLM (where
    the first layer's kernel is wider than the grid, so the mirror boundary wraps more than once)."""
    masks = np.stack([_mask_array(seed, grid * 14) for seed in (1, 2)])
    got = anatomical_bias_maps(torch.from_numpy(masks).float()[:, None], grid, layers, scale=2.5)
    assert got.shape == (2, 1, layers, grid * grid)
    for index, mask in enumerate(masks):
        np.testing.assert_allclose(got[index, 0].numpy(), _reference_maps(mask, grid, layers, 2.5), atol=1e-5)
    sigmas = anatomical_layer_sigmas(layers)
    assert sigmas[0] > sigmas[-1] and sigmas == sorted(sigmas, reverse=True)  # coarse to fine


def test_an_empty_mask_biases_nothing():
    assert torch.count_nonzero(anatomical_bias_maps(torch.zeros(1, 1, SIZE, SIZE), GRID, 3)) == 0


@pytest.fixture(scope="module")
def masked_models():
    """The same random weights with and without the bias, for the `llava` connector and for `sma`."""
    models = {}
    for connector in ("llava", "sma"):
        plain, processor = build_tiny(vocab_size=512, seed=0, connector=connector, llm_layers=3)
        biased, _ = build_tiny(vocab_size=512, seed=0, connector=connector, llm_layers=3, anatomical_bias="masks",
                               anatomical_bias_scale=4.0)
        models[connector] = (plain.eval(), biased.eval(), processor)
    return models


def _inputs(processor, suffix=True):
    images = [[_image(1)], [_image(2), _image(3)]]
    masks = [[Image.fromarray(_mask_array(1))], [Image.fromarray(_mask_array(2)), Image.fromarray(_mask_array(3))]]
    return processor(images=images, anatomy_masks=masks, suffix=REPORTS if suffix else None)


@pytest.mark.parametrize("connector", ["llava", "sma"])
def test_the_bias_adds_no_parameter(masked_models, connector):
    plain, biased, _ = masked_models[connector]
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in biased.state_dict().items()}
    for key, value in plain.state_dict().items():
        assert torch.equal(value, biased.state_dict()[key]), key


def _attention_masks(model, inputs) -> dict:
    """The additive mask each LLM attention layer receives (a pre-hook registered after the model's own)."""
    seen = {}

    def capture(module, args, kwargs):
        seen[module.layer_idx] = kwargs["attention_mask"]
    handles = [m.register_forward_pre_hook(capture, with_kwargs=True)
               for m in model.model.language_model.modules() if type(m).__name__ == "LlamaAttention"]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_llava_bias_sits_on_text_to_patch_logits_in_every_layer(masked_models):
    plain, biased, processor = masked_models["llava"]
    inputs = _inputs(processor)
    inputs["attention_mask"][0, -3:] = 0  # padding too: the bias must sit on top of the model's own mask
    masks = _attention_masks(biased, inputs)
    assert sorted(masks) == [0, 1, 2]
    image = inputs["input_ids"] == biased.config.image_token_id
    for layer, mask in masks.items():
        for row in range(2):
            views = int(image[row].sum()) // GRID**2
            expected = np.concatenate([_reference_maps(_mask_array(seed), GRID, 3, 4.0)[layer]
                                       for seed in ([1], [2, 3])[row][:views]])
            text = torch.nonzero(~image[row]).flatten()
            queries = text[text > torch.nonzero(image[row]).max()]  # text after the image: it sees every patch
            for query in queries[:5].tolist():
                if inputs["attention_mask"][row, query] == 0:
                    continue
                logits = mask[row, 0, query]
                np.testing.assert_allclose(logits[image[row]].numpy(), expected, atol=1e-5)
                allowed = torch.isclose(logits, torch.zeros(())) | image[row]
                assert bool(allowed[: query + 1][inputs["attention_mask"][row, : query + 1].bool()].all())
            # image positions (queries) get no bias: their row is the plain causal mask
            first_patch = int(torch.nonzero(image[row])[0])
            assert float(mask[row, 0, first_patch + 1, first_patch]) == 0.0


def _text_to_mask_share(model, inputs, eager: bool = True) -> float:
    """Share of the attention mass from report tokens to image patches that lands inside the mask (llava: the LLM's
    attention, mean over layers and heads)."""
    model.model.language_model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.model.language_model.config._attn_implementation = "sdpa"
    image = inputs["input_ids"] == model.config.image_token_id
    inside = (anatomical_bias_maps(inputs["anatomy_masks"], GRID, 1)[:, :, 0] > 0.5)  # (B, V, P): the mask's core
    shares = []
    for row in range(image.shape[0]):
        views = int(image[row].sum()) // GRID**2
        core = inside[row, :views].reshape(-1)
        report = inputs["labels"][row] != -100
        for attention in out.attentions:  # (B, heads, S, S)
            to_image = attention[row][:, report][:, :, image[row]]  # (heads, report, patches)
            shares.append(float(to_image[..., core].sum() / to_image.sum()))
    return float(np.mean(shares))


def test_llava_bias_moves_attention_mass_into_the_mask(masked_models):
    plain, biased, processor = masked_models["llava"]
    inputs = _inputs(processor)
    without, with_bias = _text_to_mask_share(plain, inputs), _text_to_mask_share(biased, inputs)
    assert with_bias > without + 0.1, (without, with_bias)


def test_sma_bias_moves_the_adapter_cross_attention_into_the_mask(masked_models):
    plain, biased, processor = masked_models["sma"]
    inputs = _inputs(processor)
    inside = (anatomical_bias_maps(inputs["anatomy_masks"], GRID, 1)[:, :, 0] > 0.5).reshape(2, -1)
    shares = []
    for model in (plain, biased):
        adapter = model.model.connector.adapters["image"]
        adapter.output_attentions = True
        try:
            with torch.no_grad():
                model(**inputs)
            weights = adapter.last_attentions  # (B, heads, N_mem, V * P)
        finally:
            adapter.output_attentions = False
        valid = inputs["view_mask"][:, :, None].expand(-1, -1, GRID**2).reshape(2, -1)
        shares.append(float((weights * (inside & valid)[:, None, None]).sum() / weights.sum()))
    assert shares[1] > shares[0] + 0.1, shares


@pytest.mark.parametrize("connector", ["llava", "sma"])
def test_sdpa_eager_and_cached_generation_agree(masked_models, connector):
    plain, biased, processor = masked_models[connector]
    inputs = _inputs(processor)
    with torch.no_grad():
        sdpa = biased(**inputs).logits
        biased.model.language_model.config._attn_implementation = "eager"
        try:
            eager = biased(**inputs).logits
        finally:
            biased.model.language_model.config._attn_implementation = "sdpa"
        unbiased = plain(**inputs).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=1e-4)
    assert (sdpa - unbiased).abs().max() > 1e-3  # the bias changes what the model says
    prompt = _inputs(processor, suffix=False)
    with torch.no_grad():
        cached = biased.generate(**prompt, max_new_tokens=10, do_sample=False)
        uncached = biased.generate(**prompt, max_new_tokens=10, do_sample=False, use_cache=False)
        beams = biased.generate(**prompt, max_new_tokens=10, do_sample=False, num_beams=2)
    assert torch.equal(cached, uncached)
    assert beams.shape[0] == 2


def test_a_biased_model_refuses_to_run_without_masks(masked_models):
    _, biased, processor = masked_models["llava"]
    inputs = _inputs(processor)
    inputs.pop("anatomy_masks")
    with pytest.raises(ValueError, match="anatomy_masks"):
        biased(**inputs)


def test_the_processor_gives_masks_the_geometry_of_their_images(masked_models):
    """A mask that is the image itself (a binary image) comes out equal to the image's own pixel values, un-normalised:
    same resizing and cropping. Non-square, larger than the encoder input, two views, and stitched."""
    _, _, processor = masked_models["llava"]
    binary = [Image.fromarray((_mask_array(seed, 96)[:, :80] * 255).astype(np.uint8)) for seed in (4, 5)]
    out = processor(images=[binary], anatomy_masks=[binary])
    mean, std = processor.image_processor.image_mean[0], processor.image_processor.image_std[0]
    torch.testing.assert_close(out["anatomy_masks"], (out["pixel_values"][:, :, 0] * std + mean).clamp(0, 1),
                               atol=1e-5, rtol=0)
    # the feature cache's path: masks alone, the images not decoded, the same values
    torch.testing.assert_close(processor.anatomy_mask_values([binary], [binary]), out["anatomy_masks"])
    with pytest.raises(ValueError, match="must match its image"):
        processor(images=[binary[:1]], anatomy_masks=[[binary[0].resize((40, 40))]])
    with pytest.raises(ValueError, match="one mask per image"):
        processor(images=[binary], anatomy_masks=[binary[:1]])
    from processing_s2d import S2DAlignProcessor

    stitcher = S2DAlignProcessor(processor.image_processor, processor.tokenizer, processor.text_encoder_tokenizer,
                                 num_memory_queries=8, multiview="stitch")
    out = stitcher(images=[binary], anatomy_masks=[binary])
    assert out["anatomy_masks"].shape == (1, 1, SIZE, SIZE)
    torch.testing.assert_close(stitcher.anatomy_mask_values([binary], [binary]), out["anatomy_masks"])
    torch.testing.assert_close(out["anatomy_masks"], (out["pixel_values"][:, :, 0] * std + mean).clamp(0, 1),
                               atol=1e-5, rtol=0)


def test_gpt2_decoder_takes_the_bias(masked_models):
    """UDEM's own decoder: the hooks sit on GPT-2's attention layers too, and cached generation still agrees."""
    from configuration_s2d import S2DAlignConfig
    from modeling_s2d import S2DAlignForConditionalGeneration

    _, biased, processor = masked_models["llava"]
    config = biased.config.to_dict()
    llama = biased.config.text_config
    config["text_config"] = dict(model_type="gpt2", vocab_size=llama.vocab_size, n_embd=64, n_layer=2, n_head=2,
                                 n_positions=1024, bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id,
                                 pad_token_id=llama.pad_token_id)
    torch.manual_seed(0)
    model = S2DAlignForConditionalGeneration(S2DAlignConfig.from_dict(config)).eval()
    hooked = [m for m in model.model.language_model.modules()
              if type(m).__name__ == "GPT2Attention" and m._forward_pre_hooks]
    assert len(hooked) == 2
    inputs = _inputs(processor)
    with torch.no_grad():
        biased_logits = model(**inputs).logits
        model.config.anatomical_bias_scale = 0.0
        unbiased_logits = model(**inputs).logits
        model.config.anatomical_bias_scale = 4.0
    assert (biased_logits - unbiased_logits).abs().max() > 1e-3
    prompt = _inputs(processor, suffix=False)
    with torch.no_grad():
        cached = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        uncached = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_the_bias_survives_activation_checkpointing():
    """Under gradient checkpointing the LLM layers run again in the backward pass: the bias must be there again, so
    the gradients equal those of a plain backward pass (they differ if the recomputation lost it)."""
    model, processor = build_tiny(vocab_size=512, seed=0, connector="llava", llm_layers=3, anatomical_bias="masks",
                                  anatomical_bias_scale=4.0)
    inputs = _inputs(processor)
    for param in model.model.language_model.parameters():
        param.requires_grad_(True)
    model.train()

    def gradients():
        model.zero_grad()
        model(**inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.model.language_model.named_parameters()}
    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.language_model.gradient_checkpointing
    checkpointed = gradients()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)
    model.gradient_checkpointing_disable()
    model.config.anatomical_bias_scale = 0.0  # and the bias matters for these gradients at all
    assert any((gradients()[n] - g).abs().max() > 1e-6 for n, g in plain.items())
