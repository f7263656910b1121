"""`memory_spatial_prior: grid` (issue 14): the image adapter's memory queries laid on the patch grid.

The prior is checked against an independent computation in pixel coordinates, shown to sit exactly on the adapter's
cross-attention logits (alone, over several views with padding, and added to the anatomical bias), and shown to keep
each query's attention around its own cell on a fixed input.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from configuration_s2d import S2DAlignConfig
from modeling_s2d import memory_grid_prior, memory_grid_shape
from s2d_align.tiny import build_tiny

REPORTS = ["The heart is normal in size. The lungs are clear.", "Small left pleural effusion. No pneumothorax."]


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8))


@pytest.mark.parametrize("queries,shape", [(64, (8, 8)), (32, (4, 8)), (16, (4, 4)), (8, (2, 4)), (12, (3, 4)),
                                           (7, (1, 7))])
def test_grid_shape_is_the_most_square_with_columns_first(queries, shape):
    assert memory_grid_shape(queries) == shape


@pytest.mark.parametrize("queries,grid,sigma", [(32, 8, 1.0), (64, 37, 0.7), (12, 5, 2.0)])
def test_prior_is_the_documented_gaussian(queries, grid, sigma):
    """Pixel coordinates of a `grid * 14`-px image: the query's cell centre against each patch centre, distances in
    cell heights / widths times sigma."""
    rows, columns = memory_grid_shape(queries)
    size = grid * 14
    expected = np.empty((queries, grid * grid))
    for q in range(queries):
        cy, cx = (q // columns + 0.5) * size / rows, (q % columns + 0.5) * size / columns
        for p in range(grid * grid):
            py, px = (p // grid + 0.5) * 14, (p % grid + 0.5) * 14
            expected[q, p] = -0.5 * (((cy - py) / (sigma * size / rows)) ** 2
                                     + ((cx - px) / (sigma * size / columns)) ** 2)
    np.testing.assert_allclose(memory_grid_prior(queries, grid, sigma).numpy(), expected, rtol=1e-5, atol=1e-5)


def _pair(**options):
    """The same random weights with and without the grid prior (the prior adds no parameter)."""
    torch.manual_seed(0)
    plain, processor = build_tiny(REPORTS, vocab_size=256, num_memory_queries=16, max_views=2, **options)
    sigma = {"memory_spatial_prior_sigma": options.pop("memory_spatial_prior_sigma", 1.0)}
    grid, _ = build_tiny(REPORTS, vocab_size=256, num_memory_queries=16, max_views=2, memory_spatial_prior="grid",
                         **sigma, **options)
    assert plain.state_dict().keys() == grid.state_dict().keys()
    grid.load_state_dict(plain.state_dict())
    return plain.eval(), grid.eval(), processor


def _adapter_weights(model, inputs) -> torch.Tensor:
    adapter = model.model.connector.adapters["image"]
    adapter.output_attentions = True
    try:
        with torch.no_grad():
            model(**inputs)
        return adapter.last_attentions  # (B, heads, N_mem, L)
    finally:
        adapter.output_attentions = False


def test_prior_sits_exactly_on_the_cross_attention_logits_over_views_and_padding():
    """Weights with the prior == weights without it times exp(prior), renormalised, in every view; the padded view
    of a one-view study gets none."""
    plain, grid, processor = _pair()
    inputs = processor(images=[[_image(1), _image(2)], [_image(3)]], suffix=REPORTS)
    without, with_prior = _adapter_weights(plain, inputs), _adapter_weights(grid, inputs)
    prior = memory_grid_prior(16, 8, 1.0).repeat(1, 2)  # (N_mem, 2 * 64): the same cell in both views
    present = torch.tensor([[True] * 128, [True] * 64 + [False] * 64])
    expected = without * prior.exp() * present[:, None, None]
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(with_prior, expected, atol=1e-5, rtol=1e-4)
    assert with_prior[1, ..., 64:].abs().max() == 0


def test_prior_adds_to_the_anatomical_bias():
    plain, grid, processor = _pair(anatomical_bias="masks", anatomical_bias_scale=2.0)
    masks = [[Image.fromarray((np.arange(64)[None, :].repeat(64, 0) < 24).astype(np.uint8) * 255)]] * 2
    inputs = processor(images=[[_image(1)], [_image(2)]], suffix=REPORTS, anatomy_masks=masks)
    without, with_prior = _adapter_weights(plain, inputs), _adapter_weights(grid, inputs)
    expected = without * memory_grid_prior(16, 8, 1.0).exp()
    torch.testing.assert_close(with_prior, expected / expected.sum(-1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_each_query_looks_around_its_own_cell():
    """On random weights the prior dominates: every query's most attended patch lies inside its own cell (a
    transposed, flipped or shifted grid fails this)."""
    _, grid, processor = _pair(memory_spatial_prior_sigma=0.5)
    weights = _adapter_weights(grid, processor(images=[[_image(5)]], suffix=REPORTS[:1]))[0].mean(0)  # (16, 64)
    rows, columns = memory_grid_shape(16)
    top = weights.argmax(-1)
    cell_row, cell_column = (top // 8) * rows // 8, (top % 8) * columns // 8
    assert (cell_row * columns + cell_column).tolist() == list(range(16))


def test_config_refuses_the_prior_where_there_are_no_memory_queries():
    with pytest.raises(ValueError, match="memory_spatial_prior='grid'"):
        build_tiny(REPORTS, vocab_size=256, connector="llava", memory_spatial_prior="grid")
    with pytest.raises(ValueError, match="memory_spatial_prior_sigma"):
        build_tiny(REPORTS, vocab_size=256, memory_spatial_prior="grid", memory_spatial_prior_sigma=0.0)
    with pytest.raises(Exception, match="memory_spatial_prior"):  # the typed field refuses it (StrictDataclassFieldValidationError)
        build_tiny(REPORTS, vocab_size=256, memory_spatial_prior="learned")
    assert S2DAlignConfig().memory_spatial_prior == "none"  # the paper's SMA stays the default
    assert math.isclose(S2DAlignConfig().memory_spatial_prior_sigma, 1.0)


def test_model_card_states_the_grid(tmp_path):
    """A folder with the prior says so in its card (a user of the Hub model must know its connector is not the
    paper's), and a save / load round trip keeps it."""
    from modeling_s2d import S2DAlignForConditionalGeneration
    from s2d_align.hub import render_model_card

    _, grid, processor = _pair(memory_spatial_prior_sigma=0.75)
    grid.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    card = render_model_card(tmp_path, "someone/tiny-grid")
    assert "memory queries on a 4 x 4 grid over the patches, prior sigma 0.75 cells" in card
    loaded = S2DAlignForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.memory_spatial_prior == "grid" and loaded.config.memory_spatial_prior_sigma == 0.75
