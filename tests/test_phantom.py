"""The phantom set: schema, determinism, split hygiene, balance, and image content vs labels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from s2d_align.data.phantom import generate_phantom
from s2d_align.data.phantom import findings as F
from s2d_align.data.phantom.render import Anatomy, render_study
from s2d_align.data.schema import BASE_FEATURES, CHEXPERT_OBSERVATIONS, SPLITS

N_PATIENTS = 40


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return out, generate_phantom(out, N_PATIENTS, seed=3, image_size=96)


def rows(dsd):
    return [row for split in SPLITS for row in dsd[split]]


def test_schema_and_saved_copy(phantom):
    out, dsd = phantom
    assert set(dsd) == set(SPLITS)
    for split in SPLITS:
        assert set(BASE_FEATURES) <= set(dsd[split].column_names)
    reloaded = load_from_disk(str(out))
    assert reloaded["train"]["id"] == dsd["train"]["id"]
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["counts"] == {s: len(dsd[s]) for s in SPLITS}
    assert summary["total"] == len(rows(dsd))


def test_rows_are_well_formed(phantom):
    _, dsd = phantom
    all_rows = rows(dsd)
    assert len({r["id"] for r in all_rows}) == len(all_rows)
    for r in all_rows:
        assert r["report"].strip() and r["key_phrases"]
        assert len(r["image_paths"]) == 1 and Path(r["image_paths"][0]).is_absolute()
        assert r["view_positions"] == ["PA"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["study_date"])
        labels = json.loads(r["labels"])
        assert list(labels) == list(CHEXPERT_OBSERVATIONS)
        assert set(labels.values()) <= {1, 0, None}
        with Image.open(r["image_paths"][0]) as im:
            assert im.mode == "L" and im.size == (96, 96)


def test_patients_have_several_dated_studies_and_splits_are_by_patient(phantom):
    _, dsd = phantom
    split_of, dates = {}, {}
    for split in SPLITS:
        for r in dsd[split]:
            assert split_of.setdefault(r["subject_id"], split) == split, "a patient is in two splits"
            dates.setdefault(r["subject_id"], []).append(r["study_date"])
    assert len(split_of) == N_PATIENTS
    assert all(2 <= len(d) <= 4 for d in dates.values())
    assert all(len(set(d)) == len(d) for d in dates.values())
    assert {"train", "validation", "test"} == set(split_of.values())


def test_same_patient_references_in_train(phantom):
    _, dsd = phantom
    train = {r["id"]: r for r in dsd["train"]}
    for r in dsd["train"]:
        ref = train[r["reference_id"]]
        assert ref["subject_id"] == r["subject_id"] and ref["id"] != r["id"]
        earlier = [t for t in train.values() if t["subject_id"] == r["subject_id"] and t["study_date"] < r["study_date"]]
        if earlier:  # nearest earlier study
            assert ref["study_date"] == max(t["study_date"] for t in earlier)
        assert r["reference"] == ref["report"]
    for split in ("validation", "test"):  # other patients' training studies (retrieval fallback)
        for r in dsd[split]:
            assert r["reference_id"] in train and train[r["reference_id"]]["subject_id"] != r["subject_id"]


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    def digest(out, seed):
        dsd = generate_phantom(out, 6, seed=seed, image_size=64)
        h = hashlib.sha256()
        for r in rows(dsd):
            h.update(Path(r["image_paths"][0]).read_bytes())
            h.update(Path(r["anatomy_mask_paths"][0]).read_bytes())
            paths = ("image_paths", "anatomy_mask_paths")  # absolute: they differ between the two folders
            h.update(json.dumps({k: v for k, v in r.items() if k not in paths}, sort_keys=True).encode())
        return h.hexdigest()

    assert digest(tmp_path / "a", 7) == digest(tmp_path / "b", 7)
    assert digest(tmp_path / "c", 8) != digest(tmp_path / "a", 7)


def test_workers_give_identical_output(tmp_path):
    one = generate_phantom(tmp_path / "one", 5, seed=1, image_size=48)
    two = generate_phantom(tmp_path / "two", 5, seed=1, image_size=48, num_workers=2)
    for a, b in zip(rows(one), rows(two)):
        assert a["report"] == b["report"]
        assert Path(a["image_paths"][0]).read_bytes() == Path(b["image_paths"][0]).read_bytes()


def test_prevalence_is_balanced():
    """Over many patients (no images: just the findings chain) every finding sits in the 15-30% band
    and about a quarter of the studies are normal."""
    rng = np.random.default_rng(0)
    studies = []
    for _ in range(3000):
        state = F.first_study(rng)
        studies.append(state)
        for _ in range(int(rng.integers(1, 4))):
            state = F.next_study(state, rng)
            studies.append(state)
    for name in F.FINDINGS:
        share = np.mean([s[name] is not None for s in studies])
        assert 0.15 < share < 0.30, (name, share)
    assert 0.18 < np.mean([F.is_normal(s) for s in studies]) < 0.32


# --- the image shows what the labels say ------------------------------------------------------------

def _state(**present):
    state = {name: None for name in F.FINDINGS}
    state.update(present)
    return state


def _heart_width(img: np.ndarray) -> float:
    """Width (fraction of the image) of the bright run through a point always inside the heart."""
    size = img.shape[0]
    smooth = np.asarray(Image.fromarray(img).resize((size // 2, size // 2), Image.BOX), dtype=np.float32)
    s = smooth.shape[0]
    row, col = int(0.63 * s), int(0.54 * s)
    heart = np.median(smooth[row - 1:row + 2, col - 1:col + 2])
    lung = np.median(smooth[int(0.3 * s):int(0.45 * s), int(0.2 * s):int(0.3 * s)])
    bright = smooth[row] > (heart + lung) / 2
    left = right = col
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < s - 1 and bright[right + 1]:
        right += 1
    return (right - left + 1) / s


def test_heart_width_in_image_matches_cardiomegaly_label():
    widths = {True: [], False: []}
    for p in range(30):
        rng = np.random.default_rng([11, p])
        anatomy = Anatomy.draw(rng)
        cardio = {"severity": str(rng.choice(F.SEVERITIES))} if p % 2 else None
        extra = {"edema": {"severity": "mild"}} if p % 3 == 0 else {}
        img, _ = render_study(_state(cardiomegaly=cardio, **extra), anatomy, rng, 128)
        widths[cardio is not None].append(_heart_width(img))
    # Independent of the generator's own numbers: an enlarged heart is measurably wider than any normal one.
    assert min(widths[True]) > max(widths[False]) + 0.02, widths
    assert max(widths[False]) < 0.40 < min(widths[True])


def _base_brightness(img: np.ndarray, side: str) -> float:
    """Mean brightness of the lateral lung base; the patient's right is on the image's left."""
    s = img.shape[0]
    cols = slice(int(0.14 * s), int(0.24 * s)) if side == "right" else slice(int(0.76 * s), int(0.86 * s))
    return float(img[int(0.66 * s):int(0.76 * s), cols].mean())


@pytest.mark.parametrize("size", ["small", "moderate", "large"])
def test_effusion_side_is_the_brighter_base(size):
    for p in range(12):
        rng = np.random.default_rng([12, p])
        anatomy = Anatomy.draw(rng)
        side = F.SIDES[p % 2]
        other = F.SIDES[1 - p % 2]
        noise = {"opacity": {"side": other, "level": "lower"}} if p % 3 == 0 else {}
        img, _ = render_study(_state(effusion={"side": side, "size": size}, **noise), anatomy, rng, 96)
        assert _base_brightness(img, side) > _base_brightness(img, other) + 40, (p, side)


def _dark_pixels(img: np.ndarray) -> dict[str, int]:
    """Per side, pixels of the upper hemithorax clearly darker than the typical aerated lung there
    (air without lung markings). Exposure varies per study, so the threshold is relative."""
    s = img.shape[0]
    smooth = np.asarray(Image.fromarray(img).resize((s // 2, s // 2), Image.BOX), dtype=np.float32)
    h = smooth.shape[0]
    rows = slice(int(0.1 * h), int(0.45 * h))
    regions = {"right": smooth[rows, int(0.1 * h):int(0.45 * h)], "left": smooth[rows, int(0.55 * h):int(0.9 * h)]}
    lung = np.median(np.concatenate([r.ravel() for r in regions.values()]))
    return {side: int((r < lung - 20).sum()) for side, r in regions.items()}


def test_pneumothorax_side_has_air_without_lung_markings():
    for p in range(12):
        rng = np.random.default_rng([13, p])
        side, other = F.SIDES[p % 2], F.SIDES[1 - p % 2]
        img, _ = render_study(_state(pneumothorax={"side": side, "size": "small"}), Anatomy.draw(rng), rng, 128)
        dark = _dark_pixels(img)
        assert dark[side] > 30 and dark[other] < 5, (p, dark)


@pytest.mark.parametrize("side", F.SIDES)
@pytest.mark.parametrize("level", F.LEVELS)
def test_opacity_appears_where_the_report_says(side, level):
    """The pixels an opacity changes sit on the named side (patient's right = image left), at the
    named height, inside the sample's reported bounding box; also behind an enlarged heart."""
    for p in range(3):
        anatomy = Anatomy.draw(np.random.default_rng([14, p]))
        extra = {"cardiomegaly": {"severity": "moderate"}} if p == 2 else {}
        base, _ = render_study(_state(**extra), anatomy, np.random.default_rng(p), 96)
        img, locs = render_study(_state(opacity={"side": side, "level": level}, **extra), anatomy,
                                 np.random.default_rng(p), 96)
        diff = img.astype(float) - base.astype(float)
        assert diff.max() > 60  # clearly visible, even over the heart
        ys, xs = np.nonzero(diff > 20)
        cx, cy = xs.mean() / 96, ys.mean() / 96
        assert (cx < 0.5) == (side == "right"), (side, cx)
        assert {"upper": cy < 0.4, "mid": 0.3 < cy < 0.6, "lower": cy > 0.45}[level], (level, cy)
        x0, y0, x1, y1 = next(loc["bbox"] for loc in locs if loc["finding"] == "opacity")
        assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1


def test_device_adds_the_brightest_pixels():
    rng = np.random.default_rng(5)
    anatomy = Anatomy.draw(rng)
    for kind in F.DEVICES:
        plain, _ = render_study(_state(), anatomy, np.random.default_rng(1), 96)
        tube, locs = render_study(_state(device={"kind": kind}), anatomy, np.random.default_rng(1), 96)
        assert (tube > 235).sum() > 25 + (plain > 235).sum(), kind
        assert any(loc["finding"] == "device" for loc in locs)


def test_labels_agree_with_the_project_rule_labeler(phantom):
    """The labels a phantom sample carries are exactly what the rule labeler reads from its report."""
    rules = pytest.importorskip("s2d_align.labeler.rules")
    _, dsd = phantom
    for r in rows(dsd):
        assert rules.label_report(r["report"]) == json.loads(r["labels"]), r["report"]
