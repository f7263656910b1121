"""The mirror test of issue 14 on the demo's own model: the same phantom images flipped left-right must swap the
sides in the report.

The model is the final folder of a `make demo` run, committed as tests/fixtures/demo_mirror (every weight but the
MiniLM text encoder's, float16; `tests/fixtures/make_demo_mirror_fixture.py` writes it). The studies are a fixed
set of the demo's phantom test patients, rendered here by the phantom generator (the demo's seed and split)."""

import json

import pytest
import torch
from PIL import Image, ImageOps

from s2d_align.data.phantom import assign_splits, generate_patient
from s2d_align.metrics.phantom_attributes import attribute_accuracy, mirror_agreement
from s2d_align.training.demo import DemoConfig

SIDED = ("pneumothorax", "effusion", "opacity")


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    from bench.beam_grounding import load_demo_model  # the fixture + the packaged MiniLM weights, as the bench loads it

    return load_demo_model(tmp_path_factory.mktemp("demo_mirror") / "model")


@pytest.fixture(scope="module")
def sided_test_studies(tmp_path_factory):
    """The demo's test patients' studies (DemoConfig: seed, 1,200 patients, 128 px) that show a sided finding, the
    first 48 of them in patient order."""
    config = DemoConfig()
    images = tmp_path_factory.mktemp("phantom_images")
    splits = assign_splits(config.num_patients, config.seed, (0.8, 0.1, 0.1))
    studies = []
    for patient in (p for p, split in enumerate(splits) if split == "test"):
        for row in generate_patient(images, config.seed, patient, config.render_size,
                                    len(str(config.num_patients - 1))):
            if any(json.loads(row["findings"]).get(name) for name in SIDED):
                studies.append(row)
        if len(studies) >= 48:
            return studies[:48]
    return studies


def _reports(model, processor, images):
    from s2d_align.generation import generate_reports

    with torch.inference_mode():
        return generate_reports(model, processor, images, batch_size=16, max_new_tokens=DemoConfig().max_new_tokens,
                                progress=False)


@pytest.fixture(scope="module")
def mirrored_reports(demo_model, sided_test_studies):
    """(reports of the images, reports of the same images flipped left-right, findings), by study id."""
    model, processor = demo_model
    originals = [[Image.open(p) for p in row["image_paths"]] for row in sided_test_studies]
    flipped = [[ImageOps.mirror(image) for image in views] for views in originals]
    ids = [row["id"] for row in sided_test_studies]
    findings = {row["id"]: row["findings"] for row in sided_test_studies}
    return (dict(zip(ids, _reports(model, processor, originals))), dict(zip(ids, _reports(model, processor, flipped))),
            findings)


def test_the_demo_model_mostly_swaps_the_sides_when_the_image_is_flipped(mirrored_reports):
    """A regression floor, below issue 14's target (next test): what the committed demo model does today. A model
    with a default side per finding (the demo before issue 14) swaps none: its two reports state the same side."""
    before, after, findings = mirrored_reports
    result = mirror_agreement(before, after, findings)
    assert result["total"] >= 50  # 48 studies, some with two sided findings
    # 56/58 with the memory grid and six epochs of stage 1 (52/58 with four, 48/58 before the grid)
    assert result["fraction"] >= 0.85, result
    # the unflipped reports put the findings on the right side, so a swap is not two wrong sides
    accuracy = attribute_accuracy(before, findings)
    for row in ("pneumothorax side", "effusion side", "opacity side"):
        assert accuracy[row]["accuracy"] >= 0.85, (row, accuracy[row])  # 22/22, 14/16, 19/20


def test_the_demo_model_swaps_the_sides_for_nine_in_ten_sided_findings(mirrored_reports):
    """Issue 14's target: at least 90% of sided findings swap when the image is flipped (the committed demo model:
    56/58 on this set, 226/239 on the whole test split; a strict xfail until the model reached it)."""
    before, after, findings = mirrored_reports
    assert mirror_agreement(before, after, findings)["fraction"] >= 0.90
