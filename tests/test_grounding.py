"""Grounding in the demo's stand-ins: the dense vision target marks the patches a finding covers."""

import json

import torch

from s2d_align.training.standins import REGIONS, patch_targets


def test_patch_targets_mark_the_cells_a_box_covers():
    # 128 px image, 8x8 grid of 16 px cells; an opacity box over cells (row 1..2, column 5), a device box that
    # covers only 10% of a cell, a finding without a region
    locations = json.dumps([{"finding": "opacity", "side": "left", "bbox": [80, 16, 96, 48]},
                            {"finding": "device", "side": "", "bbox": [0, 0, 16, 1.6]},
                            {"finding": "ctr", "side": "", "bbox": [0, 0, 128, 128]}])
    targets = patch_targets(locations, grid=8, image_side=128).reshape(8, 8, len(REGIONS))
    opacity = targets[..., REGIONS.index("opacity")]
    assert opacity.sum() == 2 and opacity[1, 5] == 1 and opacity[2, 5] == 1  # rows are y, columns are x
    assert targets[..., REGIONS.index("device")].sum() == 0
    assert targets.sum() == 2


def test_patch_targets_follow_the_phantom_boxes():
    """On a rendered study, the effusion's cells lie on the image side opposite the patient's side named."""
    import numpy as np

    from s2d_align.data.phantom.render import Anatomy, render_study

    state = {"cardiomegaly": None, "effusion": {"side": "right", "size": "large"}, "opacity": None,
             "pneumothorax": None, "edema": None, "device": None}
    _, locations = render_study(state, Anatomy.draw(np.random.default_rng(0)), np.random.default_rng(1), 128)
    cells = patch_targets(json.dumps(locations), 8, 128).reshape(8, 8, len(REGIONS))[..., REGIONS.index("effusion")]
    rows, cols = torch.nonzero(cells, as_tuple=True)
    assert len(cols) > 0 and cols.float().mean() < 4 and rows.float().mean() > 4  # patient right = image left, low
