"""Stage-2 reference reports: `same_patient`, `retrieval` or `none` (DESIGN section 2).

Invariants (checked by `check_references` and the tests): a reference always comes from the training
split, is never the sample itself and never another entry of the sample's own study (whose report is the
sample's own report: R2Gen's MIMIC-CXR file lists one entry per image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Union

import numpy as np
from datasets import DatasetDict
from tqdm.auto import tqdm

STRATEGIES = ("same_patient", "retrieval", "none")

# Either precomputed frozen-encoder features per sample id, or a function mapping a batch of image
# paths (each sample's frontal view) to an (n, d) array; the caller brings the frozen encoder.
Features = Union[Mapping[str, np.ndarray], Callable[[list[str]], np.ndarray]]


def attach_references(dsd: DatasetDict, strategy: str, features: Features | None = None,
                      stats: dict | None = None, batch_size: int = 32) -> DatasetDict:
    """Fill `reference` / `reference_id` of every split; `stats` (if given) receives the counts.

    same_patient: another training study of the same subject, the nearest earlier one when dates are
    known, else the nearest other; falls back to retrieval when `features` is given, else no reference.
    retrieval: the training sample with the most cosine-similar image features (not itself, not its
    own study). none: empty references.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown reference strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "retrieval" and features is None:
        raise ValueError("reference strategy 'retrieval' needs image features (pass features=, or "
                         "--feature-model PATH on the command line)")
    pool = TrainPool(dsd["train"])
    counts: dict = {"strategy": strategy, "by_split": {}, "no_reference": 0}
    out = {}
    for split, ds in dsd.items():
        chosen, how = _choose(ds, strategy, pool, features, batch_size, split)
        counts["by_split"][split] = {k: how.count(k) for k in ("same_patient", "retrieval", "none")}
        counts["no_reference"] += how.count("none") if strategy != "none" else 0
        ids = [pool.ids[i] if i >= 0 else "" for i in chosen]
        texts = [pool.reports[i] if i >= 0 else "" for i in chosen]
        ds = ds.remove_columns([c for c in ("reference", "reference_id") if c in ds.column_names])
        out[split] = ds.add_column("reference", texts).add_column("reference_id", ids)
    if counts["no_reference"]:
        counts["no_reference_reason"] = (
            "no other training study of the same patient and no image features for the retrieval fallback"
            if strategy == "same_patient" and features is None else "no training sample other than the sample's own study")
    result = DatasetDict(out)
    check_references(result)
    if stats is not None:
        stats.update(counts)
    return result


class TrainPool:
    """The candidate references: the training split, indexed by subject and by study."""

    def __init__(self, train):
        self.ids: list[str] = list(train["id"])
        self.reports: list[str] = list(train["report"])
        self.studies: list[str] = list(train["study_id"])
        self.dates: list[str] = list(train["study_date"])
        self.paths: list[str] = [paths[0] if paths else "" for paths in train["image_paths"]]
        self.by_subject: dict[str, list[int]] = defaultdict(list)
        self.by_study: dict[str, list[int]] = defaultdict(list)
        for i, (subject, study) in enumerate(zip(train["subject_id"], self.studies)):
            self.by_subject[subject].append(i)
            self.by_study[study].append(i)

    def key_features(self, features: Features, batch_size: int) -> np.ndarray:
        """Normalised features of every training sample, computed once per pool."""
        if getattr(self, "_keys", None) is None:
            self._keys = _normalise(_feature_matrix(self.ids, self.paths, features, batch_size, "training features"))
        return self._keys

    def same_patient(self, subject: str, study: str, date: str) -> int:
        """Index of the nearest earlier other study of `subject` (ordered by (date, study_id)), else
        the nearest later one; -1 if the subject has no other training study. Without dates the
        study-id order decides: arbitrary for MIMIC-CXR ids, but deterministic."""
        others = [i for i in self.by_subject.get(subject, []) if self.studies[i] != study]
        if not others:
            return -1
        key = (date, study)
        earlier = [i for i in others if (self.dates[i], self.studies[i]) < key]
        if earlier:
            return max(earlier, key=lambda i: (self.dates[i], self.studies[i], -i))
        return min(others, key=lambda i: (self.dates[i], self.studies[i], i))


def _choose(ds, strategy: str, pool: TrainPool, features, batch_size: int, split: str) -> tuple[list[int], list[str]]:
    """Chosen pool index per row (-1 = none) and how it was found."""
    n = len(ds)
    chosen, how = [-1] * n, ["none"] * n
    if strategy == "none":
        return chosen, how
    if strategy == "same_patient":
        for row, (subject, study, date) in enumerate(zip(ds["subject_id"], ds["study_id"], ds["study_date"])):
            chosen[row] = pool.same_patient(subject, study, date)
            how[row] = "same_patient" if chosen[row] >= 0 else "none"
    todo = [row for row in range(n) if chosen[row] < 0]
    if todo and features is not None:
        found = retrieve(ds.select(todo), pool, features, batch_size, desc=f"retrieval ({split})")
        for row, idx in zip(todo, found):
            chosen[row], how[row] = idx, ("retrieval" if idx >= 0 else "none")
    return chosen, how


def retrieve(queries, pool: TrainPool, features: Features, batch_size: int = 32, desc: str = "retrieval") -> list[int]:
    """For each query row, the pool index with the highest cosine similarity of image features,
    excluding the query's own id and own study. -1 when no candidate is left."""
    keys = pool.key_features(features, batch_size)
    query_ids = list(queries["id"])
    query_paths = [paths[0] if paths else "" for paths in queries["image_paths"]]
    own = {pid: i for i, pid in enumerate(pool.ids)}
    # Training queries reuse their key features; only the others go through the encoder.
    new = [i for i, qid in enumerate(query_ids) if qid not in own]
    fresh = _normalise(_feature_matrix([query_ids[i] for i in new], [query_paths[i] for i in new],
                                       features, batch_size, desc))
    if new and fresh.shape[1] != keys.shape[1]:
        raise ValueError(f"feature width differs between queries ({fresh.shape[1]}) and training samples ({keys.shape[1]})")
    q = np.zeros((len(query_ids), keys.shape[1]), dtype=np.float32)
    q[[i for i, qid in enumerate(query_ids) if qid in own]] = keys[[own[qid] for qid in query_ids if qid in own]]
    if new:
        q[new] = fresh
    studies = list(queries["study_id"])
    result = []
    for start in tqdm(range(0, len(query_ids), 1024), desc=desc, disable=len(query_ids) < 5000):
        sims = q[start:start + 1024] @ keys.T
        for r in range(sims.shape[0]):
            banned = set(pool.by_study.get(studies[start + r], []))
            if query_ids[start + r] in own:
                banned.add(own[query_ids[start + r]])
            sims[r, list(banned)] = -np.inf
            best = int(np.argmax(sims[r])) if sims.shape[1] else -1
            result.append(best if best >= 0 and np.isfinite(sims[r, best]) else -1)
    return result


def _feature_matrix(ids: list[str], paths: list[str], features: Features, batch_size: int, desc: str) -> np.ndarray:
    if isinstance(features, Mapping):
        missing = [i for i in ids if i not in features]
        if missing:
            raise ValueError(f"no image features for sample id {missing[0]!r} ({len(missing)} ids missing)")
        return np.stack([np.asarray(features[i], dtype=np.float32).ravel() for i in ids]) if ids else np.zeros((0, 1), np.float32)
    chunks = [np.asarray(features(paths[s:s + batch_size]), dtype=np.float32)
              for s in tqdm(range(0, len(paths), batch_size), desc=desc, disable=len(paths) < 10 * batch_size)]
    return np.concatenate(chunks).reshape(len(paths), -1) if chunks else np.zeros((0, 1), np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_references(dsd: DatasetDict) -> None:
    """Raise ValueError if any reference is the sample itself, its own study, or not a training sample."""
    train = dsd["train"]
    train_report = dict(zip(train["id"], train["report"]))
    train_study = dict(zip(train["id"], train["study_id"]))
    for split, ds in dsd.items():
        for rid, ref, sid, study in zip(ds["id"], ds["reference"], ds["reference_id"], ds["study_id"]):
            if not sid:
                if ref:
                    raise ValueError(f"{split}/{rid}: reference text without reference_id")
                continue
            if sid == rid or train_study.get(sid) == study:
                raise ValueError(f"{split}/{rid}: reference {sid!r} is the sample's own study")
            if sid not in train_report or train_report[sid] != ref:
                raise ValueError(f"{split}/{rid}: reference {sid!r} is not a training sample")
