"""The phantom attribute metric: references score 100%, hand-written wrong reports score exactly as read by hand."""

import json

import pytest

from s2d_align.metrics.phantom_attributes import (HEADLINE_ROWS, ROWS, attribute_accuracy, mirror_agreement,
                                                  read_attribute)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from s2d_align.data.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("ph"), 150, seed=3, image_size=32)


def test_reference_reports_score_every_attribute_exactly(phantom):
    rows = [r for split in phantom.values() for r in split]
    result = attribute_accuracy({r["id"]: r["report"] for r in rows}, {r["id"]: r["findings"] for r in rows})
    for name, *_ in ROWS:
        assert result[name]["total"] >= 10, name  # every attribute is exercised
        assert result[name]["correct"] == result[name]["total"], (name, result[name]["confusion"])


STATE = {"cardiomegaly": {"severity": "mild"}, "effusion": {"side": "left", "size": "small"},
         "opacity": {"side": "right", "level": "upper"}, "pneumothorax": {"side": "right", "size": "small"},
         "edema": None, "device": {"kind": "picc line"}}


@pytest.mark.parametrize("report,expected", [
    # everything right, in other words than the phantom's
    ("The heart is mildly enlarged. Small left-sided effusion. Airspace opacity in the right upper lobe, and a "
     "small right pneumothorax. Right PICC in place.",
     {"pneumothorax side": "correct", "effusion side": "correct", "opacity side": "correct",
      "opacity level": "correct", "device kind": "correct", "effusion size": "correct",
      "pneumothorax size": "correct", "cardiomegaly severity": "correct"}),
    # sides swapped, level wrong, other device, no sizes
    ("Moderate cardiomegaly. There is a right pleural effusion. Focal opacity in the left lung base. "
     "Left pneumothorax. An endotracheal tube is in place.",
     {"pneumothorax side": "wrong", "effusion side": "wrong", "opacity side": "wrong", "opacity level": "wrong",
      "device kind": "wrong", "effusion size": "not stated", "pneumothorax size": "not stated",
      "cardiomegaly severity": "wrong"}),
    # findings only negated or missing; "bilateral" for a left effusion
    ("Normal heart size. No pneumothorax. There are small bilateral pleural effusions. No focal opacity.",
     {"pneumothorax side": "not stated", "effusion side": "wrong", "opacity side": "not stated",
      "opacity level": "not stated", "device kind": "not stated", "effusion size": "correct",
      "cardiomegaly severity": "not stated"}),
    # two sides for one finding
    ("Small left pneumothorax. Small right pneumothorax. Small left pleural effusion.",
     {"pneumothorax side": "wrong", "effusion side": "correct"}),
])
def test_hand_written_reports_are_read_as_a_reader_would(report, expected):
    result = attribute_accuracy({"s": report}, {"s": json.dumps(STATE)})
    for name, outcome in expected.items():
        assert result[name]["outcomes"] == {outcome: 1}, (name, result[name])


def test_left_and_right_for_one_pneumothorax_is_read_as_bilateral_and_scored_wrong():
    assert read_attribute("Small left pneumothorax. Small right pneumothorax.", "pneumothorax", "side") == {"bilateral"}


def test_clauses_keep_each_side_with_its_finding():
    report = "There is a small left pleural effusion and a moderate right apical pneumothorax, no edema."
    assert read_attribute(report, "effusion", "side") == {"left"}
    assert read_attribute(report, "pneumothorax", "side") == {"right"}
    assert read_attribute(report, "pneumothorax", "size") == {"moderate"}
    assert read_attribute(report, "edema", "severity") == set()


def test_headline_rows_are_the_five_of_the_issue():
    assert HEADLINE_ROWS == ("pneumothorax side", "effusion side", "opacity side", "opacity level", "device kind")


def test_mirror_agreement_counts_only_mirrored_sides():
    findings = {"a": json.dumps(STATE), "b": json.dumps({**STATE, "effusion": {"side": "bilateral", "size": "small"},
                                                         "opacity": None, "pneumothorax": None})}
    original = {"a": "Left effusion. Right upper opacity. Right pneumothorax.", "b": "Bilateral effusions."}
    flipped = {"a": "Right effusion. Right upper opacity. Left pneumothorax.", "b": "Bilateral pleural effusions."}
    result = mirror_agreement(original, flipped, findings)
    assert result["per_finding"] == {"effusion": [2, 2], "opacity": [0, 1], "pneumothorax": [1, 1]}
    assert result["swapped"] == 3 and result["total"] == 4


def test_s2d_eval_scores_attributes_of_a_phantom_split(phantom, tmp_path):
    """`s2d eval --phantom`: the references score 100%, reports with every side swapped score 0 on the sides."""
    import argparse

    from s2d_align.metrics.cli import register

    data_dir = tmp_path / "ph"
    phantom.save_to_disk(str(data_dir))
    test = phantom["test"]
    swap = {"left": "right", "right": "left"}
    swapped = [" ".join(swap.get(w, w) for w in r.split(" ")) for r in test["report"]]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"id": i, "report": r}) + "\n" for i, r in zip(test["id"], test["report"])))
    parser = argparse.ArgumentParser(prog="s2d")
    register(parser.add_subparsers(dest="command", required=True))
    for name, reports, want in (("same", test["report"], 1.0), ("swapped", swapped, 0.0)):
        preds = tmp_path / f"{name}.jsonl"
        preds.write_text("".join(json.dumps({"id": i, "report": r}) + "\n" for i, r in zip(test["id"], reports)))
        args = parser.parse_args(["eval", "--predictions", str(preds), "--references", str(refs), "--out",
                                  str(tmp_path / name), "--no-meteor", "--clean", "iu_xray", "--phantom", str(data_dir)])
        assert args.func(args) == 0
        saved = json.loads((tmp_path / name / "metrics.json").read_text())["phantom_attributes"]
        for row in ("pneumothorax side", "opacity side"):
            assert saved[row]["total"] > 0 and saved[row]["accuracy"] == want, (name, row, saved[row])
        assert saved["opacity level"]["accuracy"] == 1.0  # levels are not swapped
    args = parser.parse_args(["eval", "--predictions", str(preds), "--references", str(refs), "--out",
                              str(tmp_path / "x"), "--no-meteor", "--clean", "iu_xray", "--phantom", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="nowhere"):
        args.func(args)


def test_preprocessing_keeps_the_patient_right_on_the_image_left(phantom):
    """The processor neither flips nor crops a side away: its pixels match the PNG, not the PNG's mirror."""
    import numpy as np
    from PIL import Image

    from s2d_align.tiny import tiny_image_processor
    from processing_s2d import load_radiograph

    processor = tiny_image_processor(32)
    for path in phantom["train"]["image_paths"][:5]:
        raw = np.asarray(Image.open(path[0]).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
        pixels = processor([load_radiograph(path[0])], return_tensors="pt")["pixel_values"][0, 0].numpy()
        same = np.corrcoef(raw.ravel(), pixels.ravel())[0, 1]
        mirrored = np.corrcoef(raw[:, ::-1].ravel(), pixels.ravel())[0, 1]
        assert same > 0.98 and same > mirrored + 0.05, (same, mirrored)
