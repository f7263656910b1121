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

# Additions to the original lists, for IU X-Ray wording the original misses or mislabels. Each
# is a regex matched on the lower-cased sentence with punctuation blanked and one pad space each side.
EXTRA_MENTIONS: dict[str, tuple[str, ...]] = {
    # a bare "heart" ("Heart and mediastinum normal."); "heart failure" stays Edema
    "Cardiomegaly": (r"\bheart\b(?! failure)", r"\bcardiac(?= and mediastinal)"),
    "Enlarged Cardiomediastinum": (r"mediastinal widening", r"widened mediastin\w*"),
    # fissural thickening is pleural
    "Pleural Other": (r"thicken\w* (?:of |in |along )?the (?:\w+ )?fissure", r"fissural thickening"),
    # IU de-identification turns "sternotomy wires" into "sternotomy XXXX"; line tips are devices
    "Support Devices": (r"sternotomy xxxx", r"\btip\b", r"prosthe"),
    # findings outside the 13 that also rule out "No Finding" (the original list misses them)
    "No Finding": (r"tortuo", r"ectasia", r"ectatic", r"arthriti", r"spondylosis", r"foreign body",
                   r"sternotomy", r"post-?surgical", r"post-?operative", r"hyperexpanded",
                   r"aneurysm"),
}
EXTRA_UNMENTIONS: dict[str, tuple[str, ...]] = {
    # substring false matches: "tube" in "tuberculosis", "plate" in "platelike atelectasis",
    # Kerley "lines", breast implants
    "Support Devices": ("tubercul", "platelike", "plate-like", "plate like", "kerley b lines",
                        "septal lines", "breast prosthe", "endplate"),
    # a rib's "contour" is bone, not the cardiomediastinal contour
    "Enlarged Cardiomediastinum": ("rib contour", "contour irregularit", "contour deformit"),
    # "lump" inside "lumpectomy" (breast surgery)
    "Lung Lesion": ("lumpectomy",),
    # healed granulomatous disease, not a pneumonia
    "Pneumonia": ("granulomatous infection",),
    # "along the right heart border" locates an opacity; it says nothing about heart size
    "Cardiomegaly": ("heart border", "cardiac border"),
}


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
