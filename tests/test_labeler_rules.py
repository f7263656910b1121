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


# -- the hand-labelled set (tests/fixtures/labeler_hand_labels.jsonl) -------------------------------------------------
HAND = Path(__file__).parent / "fixtures" / "labeler_hand_labels.jsonl"


@pytest.fixture(scope="module")
def hand_rows():
    return [json.loads(line) for line in HAND.read_text(encoding="utf-8").splitlines()]


def test_hand_labelled_set_is_real_stratified_and_split(hand_rows):
    import tarfile
    import xml.etree.ElementTree as ET

    iu = [r for r in hand_rows if r["source"] == "iu_xray"]
    mimic = [r for r in hand_rows if r["source"] == "mimic_style"]
    assert len(iu) >= 300 and len(mimic) >= 100
    real = set()
    with tarfile.open(resources.files("s2d_align").joinpath("resources", "iu_xray", "NLMCXR_reports.tgz")) as tar:
        for member in tar:
            if member.name.endswith(".xml"):
                for node in ET.fromstring(tar.extractfile(member).read()).iter("AbstractText"):
                    if node.get("Label") in ("FINDINGS", "IMPRESSION") and node.text:
                        real.update(split_sentences(node.text))
    assert all(r["sentence"] in real for r in iu)
    for part in (iu, mimic):  # 30% of each part held out (per stratum, rounded)
        assert abs(sum(r["split"] == "heldout" for r in part) / len(part) - 0.3) < 0.03
    seen = {(obs, v) for r in hand_rows for obs, v in r["labels"].items()}
    assert all(v in (1, 0, -1) for _, v in seen) and {o for o, _ in seen} <= set(OBSERVATIONS)
    for obs in OBSERVATIONS[:-1]:  # every finding positive and negative; uncertain too, devices aside
        assert {(obs, 1), (obs, 0)} <= seen, obs
        assert (obs, -1) in seen or obs == "Support Devices", obs
    assert all(r["labels"].get("No Finding", 1) == 1 for r in hand_rows)  # never 0


def _agreement_table(rows):
    total = agree = 0
    per = {obs: [0, 0] for obs in OBSERVATIONS}  # labels non-blank on either side: [agree, count]
    for row in rows:
        got = label_report(row["sentence"])
        for obs in OBSERVATIONS:
            want = row["labels"].get(obs)
            total += 1
            agree += got[obs] == want
            if got[obs] is not None or want is not None:
                per[obs][0] += got[obs] == want
                per[obs][1] += 1
    return agree, total, per


HAND_BATCH_3 = Path(__file__).parent / "fixtures" / "labeler_hand_labels_batch3.jsonl"
HAND_BATCH_4 = Path(__file__).parent / "fixtures" / "labeler_hand_labels_batch4.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _floors(per, floors):
    """Every observation with 10+ labels at its measured floor (90% where none is named)."""
    for obs, (a, n) in per.items():
        if n >= 10:
            assert a / n >= floors.get(obs, 0.90) - 1e-12, (obs, a, n)


def test_heldout_agreement(hand_rows):
    """The part of batches 1-4 that was held out until round 4 (284 sentences). Measured there once with frozen rules
    (3927/3976, 98.8%; Lung Lesion 26/37, Edema 28/32, Lung Opacity 96/108, Enlarged Cardiomediastinum 11/13, Support
    Devices 17/19 below 90%). Since round 5 batches 1-4 are DEVELOPMENT data (the round-5 rules were made on them, and one
    batch-4 label was corrected): these are dev figures, 3955/3976 (99.5%), floors at the measured values. The held-out
    measurement of round 5 was batch 5 (test_fifth_batch_agreement). Round 6 (batch 5 made development data too; three
    batch-3/4 hand labels settled by CheXpert's convention): 3960/3976, Lung Lesion 34/35. See s2d_align/metrics/README.md."""
    agree, total, per = _agreement_table([r for r in hand_rows if r["split"] == "heldout"] + _rows(HAND_BATCH_3)
                                         + _rows(HAND_BATCH_4))
    print(f"batches 1-4, formerly held-out part (dev since round 5): {agree}/{total} = {agree / total:.4f}")
    for obs, (a, n) in per.items():
        print(f"  {obs:28s} {a}/{n}")
    assert agree >= 3960 and total == 3976
    _floors(per, {"Lung Lesion": 34 / 35, "Edema": 30 / 32, "Lung Opacity": 101 / 107,
                  "Enlarged Cardiomediastinum": 12 / 13, "Support Devices": 17 / 18, "No Finding": 113 / 116})


def test_fourth_batch_agreement():
    """The fourth batch (Lung Lesion and Edema cells, 42 IU + 22 MIMIC-style sentences, labelled by hand and committed
    (b7df576) before the rules, frozen since batch 3, scored it once): then 872/896 labels (97.3%), Lung Lesion 19/26.
    Development data since round 5 (rules made on it; "No new nodules" corrected to Lung Lesion -1): 892/896, Lung Lesion
    24/25, Edema 21/21, Lung Opacity 9/10, No Finding 18/19. Round 6 ('not well-seen' settled as uncertain): 894/896,
    Lung Lesion 25/25, No Finding 18/18 (measured floors)."""
    rows = _rows(HAND_BATCH_4)
    assert len(rows) == 64
    agree, total, per = _agreement_table(rows)
    assert agree >= 894
    assert per["Lung Lesion"][1] >= 25 and per["Edema"][1] >= 20
    _floors(per, {"Lung Lesion": 25 / 25, "Edema": 21 / 21, "Lung Opacity": 9 / 10, "No Finding": 18 / 18})


def test_third_batch_agreement():
    """The third batch (Lung Opacity sentences, labelled by hand and committed before it was scored, declared beforehand
    the last measurement of its round): then 859/868 labels (99.0%), Lung Opacity 49/52 (94.2%). Development data since
    round 5: 862/868, Lung Opacity 51/52. Round 6 (the two 'likely' labels settled as positive): 865/868 (measured
    floors)."""
    rows = _rows(HAND_BATCH_3)
    assert len(rows) == 62
    agree, total, per = _agreement_table(rows)
    assert agree >= 865
    assert per["Lung Opacity"][1] >= 50
    _floors(per, {"Lung Opacity": 51 / 52, "Atelectasis": 11 / 11, "Pleural Effusion": 11 / 11, "No Finding": 22 / 23})


HAND_BATCH_5 = Path(__file__).parent / "fixtures" / "labeler_hand_labels_batch5.jsonl"


def test_fifth_batch_agreement():
    """Round 5's held-out measurement: 60 IU + 28 MIMIC-style sentences, labelled by hand and committed (4a84126) before
    the labeler ran on them, rules frozen at that commit, scored once: 1221/1232 labels (99.1%); Lung Opacity 18/19,
    Lung Lesion 16/16, Edema 15/15, Cardiomegaly 12/12, Pleural Effusion 12/12, No Finding 36/40 (90.0%), but Enlarged
    Cardiomediastinum 11/15 (73.3%) and Support Devices 13/15 (86.7%) miss the issue's 90%: their floors are the
    measured ones (the target is NOT met for them). See s2d_align/metrics/README.md, "Fifth batch".
    Development data since round 6 (the round-6 rules were made on its misses): 1231/1232, every observation with 10+
    labels at 100% but No Finding 37/38 (the one miss is IU's typo "reflex" for "reflects")."""
    rows = _rows(HAND_BATCH_5)
    assert len(rows) == 88 and all(r["split"] == "heldout" for r in rows)
    assert sum(r["source"] == "iu_xray" for r in rows) == 60
    agree, total, per = _agreement_table(rows)
    assert agree >= 1231 and total == 1232
    for obs in ("Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Edema", "Support Devices", "No Finding"):
        assert per[obs][1] >= 10, obs
    _floors(per, {obs: 1.0 for obs in OBSERVATIONS[:-1]} | {"No Finding": 37 / 38})


def test_fifth_batch_is_the_selection_scripts_draw():
    """The IU part of batch 5 is exactly what `select_hand_label_sentences.py --batch-5` draws (seed 12), none of it in
    batches 1-4 (one written sentence is, see below)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("select", Path(__file__).parent / "fixtures" / "select_hand_label_sentences.py")
    select = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select)
    earlier = {r["sentence"] for r in _rows(HAND) + _rows(HAND_BATCH_3) + _rows(HAND_BATCH_4)}
    drawn = select.select_batch_5(select.iu_sentences(), earlier)
    iu = [r for r in _rows(HAND_BATCH_5) if r["source"] == "iu_xray"]
    assert [(r["sentence"], r["stratum"]) for r in iu] == [(r["sentence"], r["stratum"]) for r in drawn]
    # the IU part is disjoint from batches 1-4; one written sentence repeats batch 4 word for word ("Pulmonary edema
    # has resolved.", same labels): found after scoring, kept (the batch is not changed after scoring), reported
    assert not earlier & {r["sentence"] for r in iu}
    assert earlier & {r["sentence"] for r in _rows(HAND_BATCH_5)} == {"Pulmonary edema has resolved."}


def test_second_batch_was_split_before_labelling_rules():
    """The Lung Opacity batch: 30% of each stratum held out by the selection script's own seeded split."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("select", Path(__file__).parent / "fixtures" / "select_hand_label_sentences.py")
    select = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select)
    rows = [json.loads(line) for line in HAND.read_text(encoding="utf-8").splitlines()]
    batch = [r for r in rows if r["stratum"].startswith("Lung Opacity batch 2")]
    assert len(batch) >= 60 and sum("Lung Opacity" in r["labels"] for r in batch) >= 50
    resplit = select.split_batch([{k: r[k] for k in ("sentence", "source", "stratum")} for r in batch])
    assert {r["sentence"]: r["split"] for r in resplit} == {r["sentence"]: r["split"] for r in batch}


def test_dev_agreement(hand_rows):
    agree, total, _ = _agreement_table([r for r in hand_rows if r["split"] == "dev"])
    assert agree / total >= 0.99


# -- one test per error class of issue 9 ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    # interval change: the finding is still there
    ("No significant interval change in the moderate right pleural effusion.", {"Pleural Effusion": 1}),
    ("Without interval change in bibasilar atelectasis.", {"Atelectasis": 1}),
    ("No interval change in the size of the left pleural effusion.", {"Pleural Effusion": 1}),
    # a negation does not reach a new finding after a comma
    ("No focal consolidation, moderate left effusion.", {"Consolidation": 0, "Pleural Effusion": 1}),
    ("No pneumothorax, moderate cardiomegaly, mild pulmonary edema.",
     {"Pneumothorax": 0, "Cardiomegaly": 1, "Edema": 1}),
    ("No pneumothorax, large effusion, or consolidation.",  # but a list closed by "or" is one list
     {"Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0, "No Finding": 1}),
    # "heart" outside heart size
    ("Prosthetic heart valve is noted.", {"Support Devices": 1, "No Finding": 1}),
    ("Heart rate was elevated at the time of the exam.", {"No Finding": 1}),
    # IU's masked template says nothing readable about heart size
    ("The heart and lungs have XXXX XXXX in the interval.", {"No Finding": 1}),
    ("The heart size is unchanged.", {"Cardiomegaly": -1}),  # unmasked: CheXpert's stable rule
])
def test_error_classes(text, expected):
    assert label_report(text) == {obs: expected.get(obs) for obs in OBSERVATIONS}


@pytest.mark.parametrize("text, expected", [
    # the second batch's rules (from its development sentences)
    ("There is patchy infiltrate within normal right lower lobe.", {"Lung Opacity": 1}),
    ("Heart and pulmonary XXXX remain normal.", {"Cardiomegaly": 0, "No Finding": 1}),  # "remain": not "in"
    ("Heart size is within normal limits.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("An opacity is seen superior to the heart, in the anterior mediastinum, possibly an anterior mediastinal mass.",
     {"Lung Opacity": 1, "Enlarged Cardiomediastinum": -1}),
    ("There is infrahilar interstitial prominence.", {"Lung Opacity": 1}),
])
def test_second_batch_rules(text, expected):
    assert label_report(text) == {obs: expected.get(obs) for obs in OBSERVATIONS}


def test_r2gen_cleaned_text_is_labelled_with_one_warning(monkeypatch):
    import warnings

    from s2d_align.labeler import rules
    from s2d_align.metrics.text import clean_report_iu_xray

    monkeypatch.setattr(rules, "_warned_cleaned", False)
    cleaned = clean_report_iu_xray("No pneumothorax, small effusion. Heart size normal, small left effusion.")
    assert cleaned == "no pneumothorax small effusion . heart size normal small left effusion ."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = label_report(cleaned)
        label_report("no focal consolidation moderate left effusion .")
        label_report("No pneumothorax, small effusion.")  # raw text: no warning
    assert [str(w.message)[:40] for w in caught] == ["labelling text that looks R2Gen-cleaned "]
    assert {o: v for o, v in got.items() if v is not None} == {"Pneumothorax": 0, "Pleural Effusion": 1,
                                                               "Cardiomegaly": 0}
    assert label_report("no focal consolidation moderate left effusion .")["Pleural Effusion"] == 1


def test_anchor_index_changes_no_label():
    """The literal-anchor index only skips patterns that cannot match: same mentions as trying
    every pattern, on real IU sentences."""
    from s2d_align.labeler import phrases, rules

    ann = json.loads(resources.files("s2d_align").joinpath("resources", "iu_xray", "annotation.json").read_text())
    sentences = sorted({s for e in ann["test"] for s in split_sentences(e["report"])})
    fast = [rules._sentence_mentions(s) for s in sentences]
    everything = {k: tuple((o, "", p) for o, _, p in v) for k, v in phrases.mention_index().items()}
    every_un = {k: tuple((o, "", p) for o, _, p in v) for k, v in phrases.unmention_index().items()}

    def all_patterns(probe, index):
        out = {}
        for entries in index.values():
            for obs, _, pattern in entries:
                out.setdefault(obs, []).append(("", pattern))
        return out

    try:
        rules._cached_sentence_mentions.cache_clear()
        original = rules._candidates
        rules._candidates = lambda probe, index: all_patterns(probe, everything if index is phrases.mention_index()
                                                              else every_un)
        slow = [rules._sentence_mentions(s) for s in sentences]
    finally:
        rules._candidates = original
        rules._cached_sentence_mentions.cache_clear()
    assert fast == slow and any(fast)


@pytest.mark.parametrize("text, expected", [
    # round 5 (batches 1-4 as development data): one sentence per rule class, each failing before its rule
    # a calcified nodule is a granuloma with words between ("calcified" was missed by "calcific\w*") ...
    ("Multiple scattered calcified pulmonary nodules.", {"No Finding": None}),
    # ... but "non-calcified" says the opposite, and a list ("calcifications and dense nodule") is two things
    ("No non-calcified nodules are identified.", {"Lung Lesion": 0, "No Finding": 1}),
    ("Hilar calcifications and dense nodule in the left lung.", {"Lung Lesion": 1}),
    # a finding explained away after its noun by something that is no finding
    ("Nodular opacity in the left mid lung could represent a nipple shadow.", {"Lung Lesion": -1, "Lung Opacity": -1}),
    ("Subtle opacity over the right lower lung may be due to overlapping soft tissue.", {"Lung Opacity": -1}),
    ("Nodular density at the left base, which could represent overlapping shadows.", {"Lung Lesion": -1}),
    ("Density in the left upper lung represents superimposed bony and vascular structures.", {"No Finding": 1}),
    ("Opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),  # a finding explains it: kept
    # nipple and skin markers are no support device
    ("Repeat imaging with nipple markers is suggested.", {"No Finding": 1}),
    # "not definitely seen" doubts (CheXpert's "not clearly seen")
    ("The nodules are smaller and not definitely seen.", {"Lung Lesion": -1}),
    # "no new" does not reach past a fresh "no" (its own negation)
    ("No new nodules, and no pleural effusion or pulmonary edema.",
     {"Lung Lesion": -1, "Pleural Effusion": 0, "Edema": 0}),
    # the batch-4 labelling decisions: "lesion" and "malignancy" rule out No Finding; CheXpert's phrases said
    # another way
    ("An underlying pulmonary lesion cannot be excluded.", {"No Finding": None}),
    ("Malignancy cannot be excluded.", {"No Finding": None}),
    ("There is a vague nodular like opacity in the right midlung.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ("Diffuse reticulonodular pattern bilaterally.", {"Lung Opacity": 1}),
    ("No acute airspace process.", {"Lung Opacity": 0, "No Finding": 1}),
    ("There is mild streakiness in the right base.", {"Lung Opacity": 1}),
    ("Moderate congestive cardiac failure.", {"Edema": 1, "Cardiomegaly": -1}),
    ("The mediastinal mass has increased in opacity.", {"Enlarged Cardiomediastinum": 1}),
    ("The mediastinum is not widened.", {"Enlarged Cardiomediastinum": 0, "No Finding": 1}),
])
def test_round_5_rules(text, expected):
    got = label_report(text)
    assert {o: got[o] for o in expected} == expected
    # everything not named is blank, except No Finding, which is only named when asked about
    assert all(got[o] is None for o in OBSERVATIONS if o not in expected and o != "No Finding")


@pytest.mark.parametrize("text, expected", [
    # round 6 (batch 5 as development data): one sentence per rule class, each failing before its rule
    # positional: "overlying (the)" / "surrounding (the)" locate, as CheXpert's "over the" (its "overly the" never
    # matches "overlying the")
    ("Surgical clips overlying the superior mediastinum.", {"Support Devices": 1, "No Finding": 1}),
    ("Pacer leads overlying the right heart.", {"Support Devices": 1, "No Finding": 1}),
    # a hedged explanation by how the film was taken doubts the finding
    ("The heart appears enlarged, which may reflect AP technique.", {"Cardiomegaly": -1}),
    # bone explains a lung finding away ("likely"/a lone XXXX states it: no label); the callus itself is a finding
    ("Nodular opacity over the left 5th rib XXXX represents a healing rib fracture.",
     {"Fracture": 1, "No Finding": None}),
    ("Focal opacity in the left midlung XXXX represents healing rib callus.", {"No Finding": None}),
    # "likely" is no hedge (CheXpert's convention)
    ("Density at the right base likely represents overlapping soft tissue.", {"No Finding": 1}),
    # a stated shape abnormality is read in a clause with masked XXXX words
    ("Lobulated mediastinal contour, XXXX lymphadenopathy.", {"Enlarged Cardiomediastinum": 1, "No Finding": None}),
    # "normal" after a transitive verb is said of its object, not of the device before the verb
    ("Chest with overlying ECG leads shows normal heart size.", {"Support Devices": 1, "Cardiomegaly": 0,
                                                                 "No Finding": 1}),
    # anatomic lines are no device (CheXpert's "_line_" matches them)
    ("Small opacity lateral to the midclavicular line.", {"Lung Opacity": 1}),
    ("No visceral pleural line to suggest pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    # "otherwise" before a new subject ends a backward negation's reach; as the predicate's adverb it does not (the
    # second sentence passed before too: it guards the rule's limit)
    ("Tortuous aorta, otherwise heart and mediastinum are normal.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": None}),
    ("The heart and mediastinum are otherwise normal.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
])
def test_round_6_rules(text, expected):
    got = label_report(text)
    assert {o: got[o] for o in expected} == expected
    assert all(got[o] is None for o in OBSERVATIONS if o not in expected and o != "No Finding")


HAND_BATCH_6 = Path(__file__).parent / "fixtures" / "labeler_hand_labels_batch6.jsonl"


def test_sixth_batch_agreement():
    """Round 6's held-out measurement: 69 IU + 37 MIMIC-style sentences, labelled by hand and committed (3132bc2) before
    the labeler ran on them, rules frozen at that commit (labeler files of 9974043), scored once: 1477/1484 labels
    (99.5%); every observation with 10+ labels at 90% or more: Enlarged Cardiomediastinum 13/14, Cardiomegaly 15/16,
    Lung Opacity 18/18, Lung Lesion 12/12, Edema 12/12, Atelectasis 12/12, Pneumothorax 15/15, Pleural Effusion 18/19,
    Support Devices 15/16, No Finding 45/48. Floors at the measured values. See s2d_align/metrics/README.md, "Sixth
    batch"."""
    rows = _rows(HAND_BATCH_6)
    assert len(rows) == 106 and all(r["split"] == "heldout" for r in rows)
    assert sum(r["source"] == "iu_xray" for r in rows) == 69
    agree, total, per = _agreement_table(rows)
    print(f"batch 6: {agree}/{total} = {agree / total:.4f}")
    for obs, (a, n) in per.items():
        print(f"  {obs:28s} {a}/{n}")
    assert agree >= 1477 and total == 1484
    measured = {"Enlarged Cardiomediastinum": (13, 14), "Cardiomegaly": (15, 16), "Lung Opacity": (18, 18),
                "Lung Lesion": (12, 12), "Edema": (12, 12), "Atelectasis": (12, 12), "Pneumothorax": (15, 15),
                "Pleural Effusion": (18, 19), "Support Devices": (15, 16), "No Finding": (45, 48)}
    for obs, (_, n) in measured.items():
        assert per[obs][1] >= 12, obs  # the draw's aim: 12+ labels each
    _floors(per, {obs: a / n for obs, (a, n) in measured.items()})


def test_sixth_batch_is_the_selection_scripts_draw():
    """The IU part of batch 6 is exactly what `select_hand_label_sentences.py --batch-6` draws (seed 13), none of it in
    batches 1-5; no sentence of the batch repeats batches 1-5. Three IU sentences are in the older 160-sentence set."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("select", Path(__file__).parent / "fixtures" / "select_hand_label_sentences.py")
    select = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select)
    earlier = {r["sentence"] for r in _rows(HAND) + _rows(HAND_BATCH_3) + _rows(HAND_BATCH_4) + _rows(HAND_BATCH_5)}
    drawn = select.select_batch_6(select.iu_sentences(), earlier)
    rows = _rows(HAND_BATCH_6)
    iu = [r for r in rows if r["source"] == "iu_xray"]
    assert [(r["sentence"], r["stratum"]) for r in iu] == [(r["sentence"], r["stratum"]) for r in drawn]
    assert not {s.lower() for s in earlier} & {r["sentence"].lower() for r in rows}
    older = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert len({r["sentence"] for k in ("random", "targeted", "heldout") for r in older[k]} & {r["sentence"] for r in iu}) == 3
