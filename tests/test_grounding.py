"""Grounding: the optional 2-D position code before the image adapter (config `image_position_embedding`)."""

import torch


def test_sincos_code_matches_an_independent_numpy_computation():
    import numpy as np

    from modeling_s2d import sincos_2d_position_embedding

    rows, cols, width = 3, 5, 16
    code = sincos_2d_position_embedding(rows, cols, width).numpy()
    quarter = width // 4
    for index in range(rows * cols):
        r, c = divmod(index, cols)  # row-major, as a ViT orders its patches
        for k in range(quarter):
            omega = 10000.0 ** (-k / quarter)
            assert np.allclose(code[index, [k, quarter + k]], [np.sin(r * omega), np.cos(r * omega)], atol=1e-6)
            assert np.allclose(code[index, [2 * quarter + k, 3 * quarter + k]], [np.sin(c * omega), np.cos(c * omega)],
                               atol=1e-6)


def test_patch_position_code_reaches_the_image_adapter_and_adds_no_parameter():
    from s2d_align.tiny import build_tiny

    plain, processor = build_tiny(image_size=32, patch_size=8, vision_width=32, llm_width=64, llm_layers=1,
                                  num_memory_queries=4)
    coded, _ = build_tiny(image_size=32, patch_size=8, vision_width=32, llm_width=64, llm_layers=1,
                          num_memory_queries=4, image_position_embedding="sincos2d")
    assert coded.config.image_position_embedding == "sincos2d"
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in coded.parameters())
    coded.load_state_dict(plain.state_dict())  # same weights: only the code differs
    features = torch.randn(2, 1, 16, 32)
    mask = torch.ones(2, 1, dtype=torch.bool)
    with torch.no_grad():
        a = plain.model.get_context_embeddings(image_features=features, view_mask=mask)["image"]
        b = coded.model.get_context_embeddings(image_features=features, view_mask=mask)["image"]
        # the same features shifted by the code through the plain model give the coded model's output
        shifted = features + coded.model.patch_position_code(16)
        c = plain.model.get_context_embeddings(image_features=shifted, view_mask=mask)["image"]
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(b, c, atol=1e-5)


def test_a_patch_grid_that_does_not_match_the_config_is_refused():
    import pytest

    from s2d_align.tiny import build_tiny

    model, _ = build_tiny(image_size=32, patch_size=8, vision_width=32, llm_width=64, llm_layers=1,
                          num_memory_queries=4, image_position_embedding="sincos2d")
    with pytest.raises(ValueError, match="4x4 patch grid"):
        model.model.get_context_embeddings(image_features=torch.randn(1, 1, 9, 32),
                                           view_mask=torch.ones(1, 1, dtype=torch.bool))
