"""Stage-2 references: never the sample itself, never its own study, never from validation/test."""

from __future__ import annotations

import numpy as np
import pytest

from s2d_align.data.references import attach_references, check_references
from s2d_align.data.schema import build_dataset_dict, empty_row


def row(sid, subject, study=None, date="", report=None, split="train"):
    return split, empty_row(id=sid, subject_id=subject, study_id=study or sid, study_date=date,
                            image_paths=[f"/img/{sid}.png"], report=report or f"report of {sid}")


def dsd_of(*rows):
    by = {"train": [], "validation": [], "test": []}
    for split, r in rows:
        by[split].append(r)
    return build_dataset_dict(by)


def refs(dsd):
    return {r["id"]: r["reference_id"] for s in dsd for r in dsd[s]}


def train_ids(dsd):
    return set(dsd["train"]["id"])


@pytest.fixture()
def patients():
    return dsd_of(
        row("a1", "A", date="2020-01-01"), row("a2", "A", date="2020-03-01"), row("a3", "A", date="2020-02-01"),
        row("a4", "A", date="2020-04-01", split="validation"),
        row("b1", "B", date="2019-05-05"), row("b2", "B", date="2019-06-06", split="test"),
        row("c1", "C", date="2018-01-01", split="test"), row("c2", "C", date="2018-02-01", split="validation"),
        # MIMIC/R2Gen style: two entries (images) of one study, one other study
        row("m1-img1", "M", study="m1", report="shared report of m1"), row("m1-img2", "M", study="m1", report="shared report of m1"),
        row("m2-img1", "M", study="m2"),
    )


def test_same_patient_nearest_earlier_else_nearest_later(patients):
    r = refs(attach_references(patients, "same_patient"))
    assert r["a2"] == "a3"  # 2020-03 -> nearest earlier is 2020-02, not 2020-01
    assert r["a3"] == "a1"
    assert r["a1"] == "a3"  # no earlier study: the nearest later one
    assert r["a4"] == "a2"  # validation sample, reference from train
    assert r["b2"] == "b1"
    assert r["b1"] == ""  # B's only other study is in test: never a reference
    assert r["c1"] == "" and r["c2"] == ""  # C has no training study at all


def test_same_patient_never_picks_the_same_study(patients):
    r = refs(attach_references(patients, "same_patient"))
    assert r["m1-img1"] == "m2-img1" and r["m1-img2"] == "m2-img1"  # not the other image of m1
    assert r["m2-img1"] in ("m1-img1", "m1-img2")


def test_no_reference_is_counted_and_fallback_uses_retrieval(patients):
    stats = {}
    out = attach_references(patients, "same_patient", stats=stats)
    assert stats["no_reference"] == 3 and "no image features" in stats["no_reference_reason"]
    assert stats["by_split"]["test"] == {"same_patient": 1, "retrieval": 0, "none": 1}
    features = {i: np.eye(16)[k] for k, i in enumerate(sorted(refs(out)))}
    features["c1"] = features["a1"] * 0.9 + features["b1"] * 0.1  # closest to a1
    stats = {}
    r = refs(attach_references(patients, "same_patient", features=features, stats=stats))
    assert r["c1"] == "a1" and r["a2"] == "a3"  # fallback only where same_patient found nothing
    assert stats["by_split"]["test"]["retrieval"] == 1 and stats["no_reference"] == 0


def test_retrieval_nearest_by_cosine_excluding_self_and_own_study():
    dsd = dsd_of(row("t1", "P1"), row("t2", "P2"), row("t3", "P3"), row("s1-a", "P4", study="s1"),
                 row("s1-b", "P4", study="s1"), row("v1", "P5", split="validation"), row("x1", "P6", split="test"))
    f = {"t1": [1, 0, 0], "t2": [0.9, 0.1, 0], "t3": [0, 0, 1], "s1-a": [0, 1, 0], "s1-b": [0, 1, 0.01],
         "v1": [0, 0, 5], "x1": [10, 0.5, 0]}
    r = refs(attach_references(dsd, "retrieval", features={k: np.array(v, float) for k, v in f.items()}))
    assert r["t1"] == "t2" and r["t2"] == "t1"  # itself would be most similar: excluded
    assert r["s1-a"] not in ("s1-a", "s1-b") and r["s1-b"] not in ("s1-a", "s1-b")  # own study excluded
    assert r["v1"] == "t3"  # scale-free: cosine, not dot product
    assert r["x1"] == "t1"


def test_retrieval_allows_identical_text_from_another_sample():
    dsd = dsd_of(row("t1", "P1", report="No acute disease."), row("t2", "P2", report="No acute disease."),
                 row("t3", "P3", report="Big effusion."))
    f = {"t1": np.array([1.0, 0]), "t2": np.array([1.0, 0.01]), "t3": np.array([0, 1.0])}
    out = attach_references(dsd, "retrieval", features=f)
    assert out["train"][0]["reference_id"] == "t2" and out["train"][0]["reference"] == "No acute disease."


def test_retrieval_with_a_callable_encoder():
    dsd = dsd_of(row("t1", "P1"), row("t2", "P2"), row("t3", "P3"), row("v1", "P4", split="validation"))
    seen = []

    def encoder(paths):  # the caller's frozen encoder: here, a fixed vector per file name
        seen.extend(paths)
        table = {"t1": [1, 0], "t2": [0.7, 0.7], "t3": [0, 1], "v1": [0.1, 1]}
        return np.array([table[p.split("/")[-1][:-4]] for p in paths], float)

    r = refs(attach_references(dsd, "retrieval", features=encoder))
    assert r == {"t1": "t2", "t2": "t1", "t3": "t2", "v1": "t3"}
    assert sorted(seen) == sorted(f"/img/{i}.png" for i in ("t1", "t2", "t3", "v1"))  # each image encoded once


def test_randomised_leakage_invariants():
    """Many random patients/splits/features: every reference is a training sample of another study."""
    rng = np.random.default_rng(0)
    rows, feats = [], {}
    for p in range(60):
        split = rng.choice(["train", "validation", "test"], p=[0.6, 0.2, 0.2])
        for k in range(int(rng.integers(1, 4))):
            sid = f"p{p}-s{k}"
            for img in range(int(rng.integers(1, 3))):
                rid = f"{sid}-i{img}"
                rows.append(row(rid, f"p{p}", study=sid, date=f"2020-0{k + 1}-01", split=str(split)))
                feats[rid] = rng.normal(size=8)
    dsd = dsd_of(*rows)
    for strategy, features in (("same_patient", None), ("same_patient", feats), ("retrieval", feats)):
        out = attach_references(dsd, strategy, features=features)
        train = {r["id"]: r for r in out["train"]}
        for split in out:
            for r in out[split]:
                if r["reference_id"]:
                    ref = train[r["reference_id"]]  # KeyError if it came from validation/test
                    assert ref["id"] != r["id"] and ref["study_id"] != r["study_id"]
                    assert r["reference"] == ref["report"]
                    if strategy == "same_patient" and features is None:
                        assert ref["subject_id"] == r["subject_id"]
        check_references(out)


def test_none_strategy_and_errors(patients):
    out = attach_references(patients, "none")
    assert set(refs(out).values()) == {""} and set(out["train"]["reference"]) == {""}
    with pytest.raises(ValueError, match="needs image features"):
        attach_references(patients, "retrieval")
    with pytest.raises(ValueError, match="unknown reference strategy 'nearest'"):
        attach_references(patients, "nearest")
    with pytest.raises(ValueError, match="no image features for sample id"):
        attach_references(patients, "retrieval", features={"a1": np.ones(3)})


def test_check_references_catches_leaks(patients):
    out = attach_references(patients, "same_patient")
    leaked = out["validation"].map(lambda r: {"reference_id": "b2", "reference": "report of b2"} if r["id"] == "a4" else {})
    out["validation"] = leaked
    with pytest.raises(ValueError, match="validation/a4: reference 'b2' is not a training sample"):
        check_references(out)
    selfish = out["train"].map(lambda r: {"reference_id": "a1", "reference": "report of a1"} if r["id"] == "a1" else {})
    out["train"] = selfish
    with pytest.raises(ValueError, match="own study"):
        check_references(out)
