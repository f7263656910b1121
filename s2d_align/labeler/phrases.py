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

# Additions to the original lists, for real report wording the original misses or mislabels. Each
# is a regex matched on the lower-cased sentence with punctuation blanked (hyphens kept) and one pad
# space each side. Where these differ from chexpert-labeler, the comment says why.
EXTRA_MENTIONS: dict[str, tuple[str, ...]] = {
    # A bare "heart" about its size ("Heart and mediastinum normal."). The original matches only "the
    # heart"; a bare "heart" also names the valve, the rate, the border, failure: none is heart size.
    "Cardiomegaly": (r"\bheart\b(?! (?:failure|valve|rate|rhythm|border|disease|transplant))",
                     r"\bcardiac(?= and mediastinal)"),
    # a mediastinal mass widens the mediastinal contour (it is no lung lesion: see the unmentions)
    "Enlarged Cardiomediastinum": (r"mediastinal widening", r"\bwide(?:ned)? mediastin\w*", r"mediastinal mass"),
    # "interstitial prominence" is CheXpert's "interstitial marking" said another way; "reticulonodular" its
    # "reticular pattern" with nodules in it; "airspace process" its "airspace disease"; "streakiness" a streaky
    # opacity
    "Lung Opacity": (r"\binterstitial prominence", r"\bprominen\w* (?:of the )?interstiti", r"reticulonodular",
                     r"\bair[- ]?space process", r"\bstreakiness\b"),
    # "nodular-like opacity" is CheXpert's "nodular opacity"
    "Lung Lesion": (r"\bnodular[- ]like (?:opacit|densit)",),
    # "congestive cardiac failure" is CheXpert's "heart failure" (aggregate() gives it the CHF rule too)
    "Edema": (r"\bcardiac failure",),
    # fissural thickening and pleural-parenchymal scarring are pleural
    "Pleural Other": (r"thicken\w* (?:of |in |along )?the (?:\w+ )?fissure", r"fissural thickening",
                      r"pleural-parenchymal", r"pleuroparenchymal"),
    # fluid in a fissure is pleural fluid
    "Pleural Effusion": (r"\bfluid (?:\w+ ){0,4}fissure",),
    # IU de-identification turns "sternotomy wires" into "sternotomy XXXX"; line tips, surgical clips,
    # stents, wires, pacer leads and ports are devices too (the original lists miss them)
    "Support Devices": (r"sternotomy xxxx", r"\btip\b", r"prosthe", r"\bclips?\b", r"\bstents?\b",
                        r"\bwires?\b", r"\bleads\b(?! to\b)", r"port-?a-?cath", r"\bportacath\b"),
    # findings outside the 13 that also rule out "No Finding" (the original list misses them; its
    # "density" and "metastasis" miss "densities" and "metastatic")
    "No Finding": (r"tortuo", r"ectasia", r"ectatic", r"arthriti", r"spondylosis", r"foreign body",
                   r"sternotomy", r"post-?surgical", r"post-?operative", r"hyperexpanded",
                   r"aneurysm", r"densities", r"metasta", r"cavit", r"sarcoid", r"osteophyt",
                   r"osteochondroma", r"\b(?:lung|pulmonary) disease", r"\binjur", r"shrapnel",
                   # a lesion of unnamed kind and a malignancy are findings, though not CheXpert's Lung Lesion
                   # (its list has "cavitary lesion", "mass", "nodule", "neoplasm", not these)
                   r"\blesions?\b", r"malignan",
                   # a rib's callus is a healing fracture (round 6: an opacity "represents healing rib callus")
                   r"\bcallus"),
}
# Regexes, matched like the mentions; a mention overlapping one is dropped.
EXTRA_UNMENTIONS: dict[str, tuple[str, ...]] = {
    # substring false matches: "tube" in "tuberculosis", "plate" in "platelike atelectasis",
    # Kerley "lines", breast implants; a calcified native valve is no device
    "Support Devices": (r"tubercul", r"platelike", r"plate-like", r"plate like", r"kerley b lines",
                        r"septal lines", r"\bb-lines", r"breast prosthe", r"endplate",
                        r"calcifi\w* (?:\w+ ){0,5}valve", r"valve calcifi\w*", r"\bclipped\b",
                        # CheXpert's list has "marker": a nipple or skin marker is taped on for the picture,
                        # no support device
                        r"\b(?:nipple|skin|bb) markers?",
                        # CheXpert's "_line_" also matches anatomy: reference lines of the chest and the pleural line
                        # of a pneumothorax are no device ("near the midclavicular line")
                        r"\b(?:mid-?clavicular|mid-?axillary|anterior axillary|posterior axillary|paraspinal|"
                        r"paravertebral|paratracheal|(?:visceral )?pleural|junction|azygo-?esophageal|skin) lines?\b"),
    # a rib's "contour" is bone, not the cardiomediastinal contour; a ventricle's is the heart's
    "Enlarged Cardiomediastinum": (r"rib contour", r"contour irregularit", r"contour deformit",
                                   r"ventricular contour",
                                   # CheXpert's positional unmentions ("in the mediastinum") with a compartment
                                   # named: they locate another finding
                                   r"in the (?:anterior|posterior|middle|superior|inferior) mediastinum"),
    # "lump" inside "lumpectomy" (breast surgery); a calcified nodule is a granuloma (the original
    # unmentions "calcified nodul", the words adjacent; "calcified pulmonary nodules" and "calcific density
    # nodules" say the same). Not across a list: "calcifications and dense nodule" are two things. ("non-calcified"
    # is kept by _matches: a "non" right before an unmention undoes it.)
    "Lung Lesion": (r"lumpectomy", r"calcifi\w* (?:(?!and |or |with )\w+ ){0,2}nodul", r"mediastinal mass"),
    # a pleural-parenchymal scar is Pleural Other (the original unmentions "pleural scar" here); a mass
    # "increased in opacity" got denser: said of the mass, no lung opacity
    "Lung Opacity": (r"pleural-parenchymal (?:[\w-]+ ){0,4}scar\w*", r"(?:increased|decreased) in (?:opacity|density)"),
    # a healed, prior infection is no pneumonia
    "Pneumonia": (r"granulomatous infection", r"(?:prior|old|previous|remote|healed|histoplasm\w*) (?:\w+ ){0,2}infection"),
    # "along the right heart border" locates an opacity; the heart's valve or rate is not its size
    "Cardiomegaly": (r"heart border", r"cardiac border", r"heart valve", r"heart rate",
                     # positional, as CheXpert's "over the heart": "an opacity superior to the heart"
                     r"(?:superior|inferior|anterior|posterior|lateral|adjacent) to the heart", r"behind the heart"),
    # cystic fibrosis is a lung disease, not pleural
    "Pleural Other": (r"cystic fibrosis",),
    # a knee or other joint effusion is not pleural
    "Pleural Effusion": (r"joint effusion",),
    # a broken screw or sternotomy wire is the hardware's fracture, not a bone's
    "Fracture": (r"fractur\w* (?:of |in )?(?:the )?(?:[\w-]+ ){0,3}(?:screws?|wires?|leads?|hardware|plates?|rods?|sternotomy xxxx)\b",),
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
    # "overlying (the)" and "surrounding (the)" are ours: CheXpert's "overly the" never matches
    # "overlying the" ("Catheter overlying the right mediastinum", "clips overlying the superior mediastinum" locate a
    # device), and a density "surrounding superior mediastinum" is located by it too
    positions = [a + b for a in ("over the", "overly the", "in the", "overlying the", "overlying", "surrounding the",
                                 "surrounding")
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
    out = {obs: [re.escape(p) for p in pats] for obs, pats in phrases.items()}
    for obs, extra in EXTRA_UNMENTIONS.items():
        out[obs] = out.get(obs, []) + list(extra)  # already regexes
    return {obs: tuple(re.compile(p) for p in pats) for obs, pats in out.items()}


def literal_anchor(pattern: str) -> str:
    """A piece of literal text that every match of ``pattern`` contains: the longest run of plain
    characters outside groups, classes and escapes, less any character a quantifier makes optional.
    ``anchor in text`` is a fast test (a C substring search) that lets a pattern be skipped."""
    depth, runs, run, i = 0, [], "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
            if depth == 0 and nxt in " -.,()[]{}|?*+\\/":  # an escaped literal (re.escape output)
                run += nxt
            else:
                runs.append(run)
                run = ""
            i += 2
            continue
        if c in "([":
            depth += 1
            runs.append(run)
            run = ""
        elif c in ")]":
            depth -= 1
        elif depth == 0 and c in "?*{":
            run = run[:-1]  # the previous character is optional
            runs.append(run)
            run = ""
            if c == "{":
                i = pattern.index("}", i)
        elif depth == 0 and c in "+.^$":
            runs.append(run + (c if c == "+" else ""))
            run = "" if c != "+" else run[-1:]
        elif depth == 0 and c == "|":
            return ""  # a top-level alternative: no common literal
        elif depth == 0:
            run += c
        i += 1
    runs.append(run)
    return max(runs, key=len)


@lru_cache(maxsize=1)
def anchored_mentions() -> dict[str, tuple[tuple[str, re.Pattern], ...]]:
    """``(anchor, pattern)`` of every mention pattern (see ``literal_anchor``)."""
    return {obs: tuple((literal_anchor(p.pattern), p) for p in pats) for obs, pats in mention_patterns().items()}


@lru_cache(maxsize=1)
def anchored_unmentions() -> dict[str, tuple[tuple[str, re.Pattern], ...]]:
    return {obs: tuple((literal_anchor(p.pattern), p) for p in pats) for obs, pats in unmention_patterns().items()}


def _trigram_index(anchored: dict[str, tuple[tuple[str, re.Pattern], ...]]) -> dict[str, tuple]:
    """{first three characters of an anchor: ((observation, anchor, pattern), ...)}: the patterns
    worth trying on a text are found from the text's own three-character substrings."""
    index: dict[str, list] = {}
    for obs, pairs in anchored.items():
        for anchor, pattern in pairs:
            if len(anchor) < 3:
                raise ValueError(f"pattern {pattern.pattern!r} has no literal anchor of 3+ characters")
            index.setdefault(anchor[:3], []).append((obs, anchor, pattern))
    return {k: tuple(v) for k, v in index.items()}


@lru_cache(maxsize=1)
def mention_index() -> dict[str, tuple]:
    return _trigram_index(anchored_mentions())


@lru_cache(maxsize=1)
def unmention_index() -> dict[str, tuple]:
    return _trigram_index(anchored_unmentions())
