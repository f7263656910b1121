"""The CheXpert labeler's phrase lists, loaded from the copy shipped in the package.

Source: stanfordmlgroup/chexpert-labeler @44ddeb3 (MIT), copied verbatim to
``s2d_align/resources/chexpert_labeler``. Loading follows its ``stages/extract.py``:
``_`` in a phrase stands for a space (``_line_`` only matches the word "line"), each file's stem
names the observation, and positional unmentions ("over the heart") are generated for
Cardiomegaly and Enlarged Cardiomediastinum.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

# Additions to the original lists, each fixing a substring false match the original labeler
# makes on IU X-Ray text (it matches phrases as bare substrings).
EXTRA_UNMENTIONS: dict[str, tuple[str, ...]] = {
    # "tube" inside "tuberculosis", "plate" inside "platelike atelectasis", Kerley "lines".
    "Support Devices": ("tubercul", "platelike", "plate-like", "plate like", "kerley b lines",
                        "septal lines"),
    # "along the right heart border" locates an opacity; it says nothing about heart size.
    "Cardiomegaly": ("heart border", "cardiac border"),
}
# A bare "heart" ("Heart and mediastinum normal.", "Normal heart.") is how IU reports often name
# the heart; the original list only has "the heart" / "heart size". "heart failure" stays Edema.
EXTRA_MENTIONS: dict[str, tuple[str, ...]] = {"Cardiomegaly": (r"\bheart\b(?! failure)",)}


def _resource_dir():
    return resources.files("s2d_align").joinpath("resources", "chexpert_labeler", "phrases")


def _observation_name(stem: str) -> str:
    return stem.replace("_", " ").title()


def _read_phrases(kind: str) -> dict[str, list[str]]:
    """{observation: [literal phrase, ...]} for ``kind`` in {"mention", "unmention"}."""
    out: dict[str, list[str]] = {}
    for entry in sorted(_resource_dir().joinpath(kind).iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".txt"):
            continue
        obs = _observation_name(entry.name[: -len(".txt")])
        lines = entry.read_text(encoding="utf-8").splitlines()
        # strip() first, then "_" -> " ": "_line_" keeps its spaces, as in chexpert-labeler
        out[obs] = [line.strip().replace("_", " ") for line in lines if line.strip()]
    return out


def _positional_unmentions(mentions: dict[str, list[str]]) -> dict[str, list[str]]:
    """As chexpert-labeler's ``add_unmention_phrases``: "over the heart" is not Cardiomegaly."""
    positions = [a + b for a in ("over the", "overly the", "in the")
                 for b in ("", " superior", " left", " right")]
    cardio = [p + " " + m.replace("the ", "") for p in positions for m in mentions["Cardiomegaly"]
              if m not in ("cardiomegaly", "cardiac enlargement")]
    # .strip(): the original joins " mediastinum" with a second space and so never matches it
    mediast = [p + " " + m.strip() for p in positions for m in mentions["Enlarged Cardiomediastinum"]]
    return {"Cardiomegaly": cardio, "Enlarged Cardiomediastinum": mediast}


@lru_cache(maxsize=1)
def mention_patterns() -> dict[str, tuple[re.Pattern, ...]]:
    """Compiled mention patterns per observation (the 13 findings and the "No Finding" list)."""
    phrases = _read_phrases("mention")
    out = {obs: [re.escape(p) for p in phrases[obs]] for obs in OBSERVATIONS}
    for obs, extra in EXTRA_MENTIONS.items():
        out[obs] += list(extra)  # already regexes
    return {obs: tuple(re.compile(p) for p in pats) for obs, pats in out.items()}


@lru_cache(maxsize=1)
def unmention_patterns() -> dict[str, tuple[re.Pattern, ...]]:
    """Compiled unmention patterns: a mention overlapping one of these is dropped."""
    phrases = _read_phrases("unmention")
    phrases.update(_positional_unmentions(_read_phrases("mention")))
    for obs, extra in EXTRA_UNMENTIONS.items():
        phrases[obs] = phrases.get(obs, []) + list(extra)
    return {obs: tuple(re.compile(re.escape(p)) for p in pats) for obs, pats in phrases.items()}
