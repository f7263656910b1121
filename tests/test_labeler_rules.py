"""Rule-based CheXpert labeler: API, the official CheXpert sample output, and hand labels of
real IU X-Ray sentences (tests/fixtures/labeler_iu_hand_labels.json)."""

import csv
import json
from importlib import resources
from pathlib import Path

import pytest

from s2d_align.labeler import OBSERVATIONS, Mention, extract_mentions, label_report, split_sentences

FIXTURE = Path(__file__).parent / "fixtures" / "labeler_iu_hand_labels.json"
CHEXPERT = resources.files("s2d_align").joinpath("resources", "chexpert_labeler")


def test_observations_are_chexperts_14_in_order():
    assert OBSERVATIONS == (
        "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices", "No Finding")


def test_mentions_carry_sentence_and_span():
    mentions = extract_mentions("Heart size is normal. There may represent atelectasis.")
    assert all(isinstance(m, Mention) for m in mentions)
    got = {(m.observation, m.status, m.sentence[m.start:m.end].lower()) for m in mentions}
    assert got == {("Cardiomegaly", 0, "heart size"), ("Atelectasis", -1, "atelectasis")}
    assert mentions[0].sentence == "Heart size is normal."


def test_split_sentences():
    assert split_sentences("Heart normal.No effusion.  \n\n1. Left PICC.") == [
        "Heart normal.", "No effusion.", "Left PICC."]
    assert split_sentences("Nodule measures 2.5 cm.") == ["Nodule measures 2.5 cm."]


def _csv_label(value: str):
    return None if value == "" else int(float(value))


def test_matches_official_chexpert_labeler_output_on_its_samples():
    """labeled_reports.csv is the output of the original (NegBio-based) CheXpert labeler."""
    with CHEXPERT.joinpath("labeled_reports.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        expected = {obs: _csv_label(row[obs]) for obs in OBSERVATIONS}
        assert label_report(row["Reports"]) == expected, row["Reports"]


@pytest.mark.parametrize("text, expected", [
    ("No pleural effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("Opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("This could be early pneumonia.", {"Pneumonia": -1}),
    ("No acute cardiopulmonary abnormality.", {"No Finding": 1}),
    ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("There are no XXXX of a large pleural effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("XXXX opacity in the left base.", {"Lung Opacity": 1}),
    ("Cannot exclude a small left effusion.", {"Pleural Effusion": -1}),
    ("Mild cardiomegaly, lungs are normal.", {"Cardiomegaly": 1}),
    ("Heart size normal, small left effusion.", {"Cardiomegaly": 0, "Pleural Effusion": 1}),
    ("Left PICC line tip in the SVC.", {"Support Devices": 1, "No Finding": 1}),
    ("Mild pulmonary edema, consistent with CHF.", {"Edema": 1, "Cardiomegaly": -1}),
])
def test_phenomena(text, expected):
    assert label_report(text) == {obs: expected.get(obs) for obs in OBSERVATIONS}


def test_no_finding_is_never_zero():
    for text in ("Large right pleural effusion.", "No effusion.", "Granuloma."):
        assert label_report(text)["No Finding"] in (1, None)


def _agreement(rows):
    agree = total = 0
    for row in rows:
        got = label_report(row["sentence"])
        for obs in OBSERVATIONS:
            total += 1
            agree += got[obs] == row["labels"].get(obs)
    return agree, total


@pytest.fixture(scope="module")
def hand_labels():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_fixture_sentences_are_real_iu_sentences(hand_labels):
    ann = json.loads(resources.files("s2d_align").joinpath("resources", "iu_xray", "annotation.json").read_text())
    sentences = {s for split in ann.values() for e in split for s in split_sentences(e["report"])}
    rows = hand_labels["random"] + hand_labels["targeted"] + hand_labels["heldout"]
    assert len(rows) >= 160
    assert all(row["sentence"] in sentences for row in rows)
    assert all(set(row["labels"]) <= set(OBSERVATIONS) for row in rows)
    assert all(v in (1, 0, -1) for row in rows for v in row["labels"].values())


@pytest.mark.parametrize("part", ["random", "targeted", "heldout"])
def test_agrees_with_hand_labels(hand_labels, part):
    agree, total = _agreement(hand_labels[part])
    print(f"{part}: {agree}/{total} = {agree / total:.4f}")
    assert agree / total >= 0.95
