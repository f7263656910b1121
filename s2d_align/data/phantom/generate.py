"""The phantom set (DESIGN section 6): patients -> studies -> PNG + report + labels + key phrases.

Determinism: every patient draws from `np.random.default_rng([seed, patient])`, and every study's
rendering noise from `[seed, patient, study, 1]`, so the output is byte-identical for a seed whatever
the number of worker processes or the order they finish in.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from PIL import Image
from tqdm.auto import tqdm

from ..references import attach_references
from ..schema import SPLITS, build_dataset_dict, labels_to_json
from ..summary import write_summary
from . import findings as F
from .render import Anatomy, render_study
from .report import key_phrases, write_report

MIN_STUDIES, MAX_STUDIES = 2, 4
THUMBNAIL = 16  # retrieval features for the phantom: the image itself, downsampled (a frozen "encoder")


def generate_phantom(out_dir, num_patients: int, seed: int = 0, image_size: int = 128,
                     splits: tuple[float, float, float] = (0.8, 0.1, 0.1), num_workers: int = 0,
                     reference: str = "same_patient", keyphrases: str = "ground_truth",
                     features=None) -> DatasetDict:
    """Generate, save (`DatasetDict.save_to_disk(out_dir)`, images under `out_dir/images`, summary in
    `out_dir/prepare_summary.json`) and return the phantom set, split by patient.

    `reference`: "same_patient" (default; validation/test patients have no training studies, so their
    references fall back to retrieval over 16x16 thumbnails of the training images), "retrieval" (on
    those thumbnails) or "none"; `features` (as for `attach_references`) replaces the thumbnails.
    `keyphrases`: "ground_truth" (from the generator's findings) or a backend of `s2d_align.keyphrases`
    run on the reports. `num_workers` > 1 renders in that many processes.
    """
    if num_patients < 1:
        raise ValueError(f"num_patients must be >= 1, got {num_patients}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    patients = _generate_patients(out / "images", num_patients, seed, image_size, num_workers)
    seconds = time.perf_counter() - start
    thumbs = {row["id"]: row.pop("_thumb") for rows in patients for row in rows}
    if keyphrases != "ground_truth":
        from ...keyphrases import extract_key_phrases

        for row in (r for rows in patients for r in rows):
            row["key_phrases"] = extract_key_phrases(row["report"], backend=keyphrases)
    split_of = assign_splits(num_patients, seed, splits)
    rows_by_split = {s: [r for p, rows in enumerate(patients) if split_of[p] == s for r in rows] for s in SPLITS}
    ref_stats: dict = {}
    dsd = attach_references(build_dataset_dict(rows_by_split), reference, stats=ref_stats,
                            features=thumbs if features is None else features)
    dsd.save_to_disk(str(out))
    on = "16x16 thumbnails" if features is None else "the given image features"
    fallback = {"same_patient": f"same_patient (fallback: retrieval on {on})",
                "retrieval": f"retrieval on {on}"}.get(reference, reference)
    options = {"dataset": "phantom", "num_patients": num_patients, "seed": seed, "image_size": image_size,
               "splits": list(splits), "reference": fallback, "keyphrases": keyphrases, "clean": False}
    n_images = sum(len(rows) for rows in patients)
    write_summary(out, dsd, options, references=ref_stats, prevalence=prevalence(dsd),
                  generation={"images": n_images, "seconds": round(seconds, 2),
                              "images_per_second": round(n_images / max(seconds, 1e-9), 1)})
    return dsd


def assign_splits(num_patients: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """Split name per patient index: a seeded shuffle cut by `fractions`; with >= 3 patients every
    split gets at least one patient."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"splits must be three non-negative fractions (train, validation, test), got {fractions}")
    total = sum(fractions)
    n_val = int(round(num_patients * fractions[1] / total))
    n_test = int(round(num_patients * fractions[2] / total))
    if num_patients >= 3:
        n_val, n_test = max(n_val, 1 if fractions[1] else 0), max(n_test, 1 if fractions[2] else 0)
    n_train = num_patients - n_val - n_test
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_patients)
    split_of = [""] * num_patients
    for rank, patient in enumerate(order):
        split_of[patient] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
    return split_of


def _generate_patients(image_dir: Path, num_patients: int, seed: int, size: int, workers: int) -> list[list[dict]]:
    jobs = [(image_dir, seed, p, size, len(str(num_patients - 1))) for p in range(num_patients)]
    bar = dict(total=num_patients, desc="phantom patients", unit="patient", disable=num_patients < 200)
    if workers and workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            return list(tqdm(pool.imap(_patient_job, jobs, chunksize=16), **bar))
    return [_patient_job(job) for job in tqdm(jobs, **bar)]


def _patient_job(job: tuple) -> list[dict]:
    image_dir, seed, patient, size, width = job
    return generate_patient(image_dir, seed, patient, size, id_width=max(5, width))


def generate_patient(image_dir: Path, seed: int, patient: int, size: int, id_width: int = 5) -> list[dict]:
    """All studies of one patient: images written to `image_dir/<subject>/<study>.png`, rows returned."""
    rng = np.random.default_rng([seed, patient])
    anatomy = Anatomy.draw(rng)
    subject = f"p{patient:0{id_width}d}"
    (image_dir / subject).mkdir(parents=True, exist_ok=True)
    date = dt.date(2010, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    state = F.first_study(rng)
    rows = []
    for k in range(int(rng.integers(MIN_STUDIES, MAX_STUDIES + 1))):
        if k:
            state = F.next_study(state, rng)
            date += dt.timedelta(days=int(rng.integers(7, 400)))
        image, locations, mask = render_study(state, anatomy, np.random.default_rng([seed, patient, k, 1]), size,
                                              with_mask=True)
        study = f"{subject}_s{k + 1}"
        path = image_dir / subject / f"{study}.png"
        Image.fromarray(image, mode="L").save(path, compress_level=1)
        # the exact lung + heart mask, for `anatomical_bias: masks` (issue 13); a real dataset gets its masks from a
        # segmentation source (README, "Anatomical attention bias")
        mask_path = image_dir / subject / f"{study}_mask.png"
        Image.fromarray(mask, mode="L").save(mask_path, compress_level=1)
        report, labels = write_report(state, rng)
        rows.append({
            "id": study, "subject_id": subject, "study_id": study, "study_date": date.isoformat(),
            "image_paths": [str(path)], "anatomy_mask_paths": [str(mask_path)], "view_positions": ["PA"],
            "report": report,
            "key_phrases": key_phrases(state), "labels": labels_to_json(labels),
            "findings": json.dumps(state, sort_keys=True), "locations": json.dumps(locations),
            "_thumb": _thumbnail(image),
        })
    return rows


def _thumbnail(image: np.ndarray) -> np.ndarray:
    small = np.asarray(Image.fromarray(image).resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR), dtype=np.float32)
    return (small - small.mean()).ravel()


def prevalence(dsd: DatasetDict) -> dict:
    """Fraction of studies showing each finding, and of normal studies, over the whole set."""
    counts: Counter[str] = Counter()
    total = 0
    for ds in dsd.values():
        for state in ds["findings"]:
            state = json.loads(state)
            total += 1
            counts.update(name for name, value in state.items() if value is not None)
            counts["normal"] += all(value is None for value in state.values())
    return {name: round(counts[name] / max(total, 1), 3) for name in (*F.FINDINGS, "normal")}
