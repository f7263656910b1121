"""Reports, CheXpert labels and key phrases of a phantom study, all fixed by its findings.

Sentences are taken from (or closely follow) real IU X-Ray FINDINGS text, e.g. "The heart is normal in
size.", "No pneumothorax or pleural effusion.", "There is a small left pleural effusion.", "Mild
cardiomegaly.", "There is a focal opacity within the right upper lung." A few variants per statement are
chosen by the seed. Each variant carries the CheXpert labels it states, so the study's labels are known
by construction; a test checks that the project's rule labeler reads exactly those labels back.
Phrasing never states uncertainty, so labels are 1, 0 or None (never -1).
"""

from __future__ import annotations

import numpy as np

from ..schema import CHEXPERT_OBSERVATIONS

Sentence = tuple[str, dict[str, int]]  # (text, labels it states)

# Opacity zones in IU phrasing: "right upper lung", "left midlung", "right lung base".
ZONE_NAMES = {"upper": "{side} upper lung", "mid": "{side} midlung", "lower": "{side} lung base"}
DEVICE_PHRASES = {"endotracheal tube": "endotracheal tube", "picc line": "right picc line",
                  "nasogastric tube": "nasogastric tube"}


def _pick(rng: np.random.Generator, variants: list[str]) -> str:
    return variants[int(rng.integers(len(variants)))]


def heart_sentence(f: dict, rng: np.random.Generator) -> Sentence:
    cardio = f["cardiomegaly"]
    if cardio is None:
        return _pick(rng, ["The heart is normal in size.", "Heart size is normal.", "Normal heart size.",
                           "The heart size is within normal limits."]), {"Cardiomegaly": 0}
    sev = cardio["severity"]
    adverb = {"mild": "mildly", "moderate": "moderately"}[sev]
    return _pick(rng, [f"{sev.capitalize()} cardiomegaly.", f"There is {sev} cardiomegaly.",
                       f"The heart is {adverb} enlarged."]), {"Cardiomegaly": 1}


def mediastinum_sentence(f: dict, rng: np.random.Generator) -> Sentence | None:
    if rng.random() < 0.5:
        return None
    return _pick(rng, ["The mediastinum is unremarkable.", "Normal mediastinal contour."]), \
        {"Enlarged Cardiomediastinum": 0}


def lung_sentence(f: dict, rng: np.random.Generator) -> Sentence:
    opacity = f["opacity"]
    if opacity is not None:
        zone = ZONE_NAMES[opacity["level"]].format(side=opacity["side"])
        return _pick(rng, [f"There is a focal airspace opacity in the {zone}.", f"Focal opacity in the {zone}.",
                           f"There is a focal opacity within the {zone}."]), {"Lung Opacity": 1}
    if f["edema"] is not None:  # the lungs are not "clear" with edema: negate consolidation only
        return _pick(rng, ["No focal consolidation.", "There is no focal consolidation."]), {"Consolidation": 0}
    text = _pick(rng, ["The lungs are clear.", "No focal airspace disease.", "The lungs are clear.",
                       "No focal airspace opacity."])
    return text, ({} if text == "The lungs are clear." else {"Lung Opacity": 0})


def edema_sentence(f: dict, rng: np.random.Generator) -> Sentence | None:
    edema = f["edema"]
    if edema is None:
        if rng.random() < 0.6:
            return None
        return _pick(rng, ["No pulmonary edema.", "There is no pulmonary edema."]), {"Edema": 0}
    sev = edema["severity"]
    return _pick(rng, [f"{sev.capitalize()} pulmonary edema.", f"There is {sev} bilateral perihilar pulmonary edema.",
                       f"{sev.capitalize()} pulmonary edema is present."]), {"Edema": 1}


def pleura_sentences(f: dict, rng: np.random.Generator) -> list[Sentence]:
    eff, ptx = f["effusion"], f["pneumothorax"]
    if eff is None and ptx is None:
        return [(_pick(rng, ["No pneumothorax or pleural effusion.", "No pleural effusion or pneumothorax.",
                             "There is no pleural effusion or pneumothorax.",
                             "There is no pneumothorax or pleural effusion."]),
                 {"Pneumothorax": 0, "Pleural Effusion": 0})]
    out = []
    if eff is None:
        out.append((_pick(rng, ["No pleural effusion.", "There is no pleural effusion."]), {"Pleural Effusion": 0}))
    else:
        out.append((effusion_text(eff, rng), {"Pleural Effusion": 1}))
    if ptx is None:
        out.append((_pick(rng, ["No pneumothorax.", "There is no pneumothorax."]), {"Pneumothorax": 0}))
    else:
        size, side = ptx["size"], ptx["side"]
        out.append((_pick(rng, [f"There is a {size} {side} apical pneumothorax.",
                                f"{size.capitalize()} {side} apical pneumothorax.",
                                f"A {size} {side} pneumothorax is present."]), {"Pneumothorax": 1}))
    return out


def effusion_text(eff: dict, rng: np.random.Generator) -> str:
    size, side = eff["size"], eff["side"]
    if side == "bilateral":
        return _pick(rng, [f"There are {size} bilateral pleural effusions.", f"{size.capitalize()} bilateral pleural effusions."])
    return _pick(rng, [f"There is a {size} {side} pleural effusion.", f"{size.capitalize()} {side} pleural effusion.",
                       f"A {size} {side}-sided pleural effusion is present."])


# the wordings of each device kind (bench/grounding_probe.py swaps them to test the kind teacher-forced)
DEVICE_SENTENCES = {
    "endotracheal tube": ["An endotracheal tube is in place.", "Endotracheal tube tip is above the carina."],
    "picc line": ["A right-sided PICC line is in place.", "Right PICC line with tip in the SVC."],
    "nasogastric tube": ["A nasogastric tube is in place.", "Nasogastric tube courses below the diaphragm."],
}


def device_sentence(f: dict, rng: np.random.Generator) -> Sentence | None:
    device = f["device"]
    if device is None:
        return None
    return _pick(rng, DEVICE_SENTENCES[device["kind"]]), {"Support Devices": 1}


def bone_sentence(f: dict, rng: np.random.Generator) -> Sentence | None:
    if rng.random() < 0.5:
        return None
    return _pick(rng, ["No acute bony abnormality.", "The osseous structures are intact."]), {}


def write_report(f: dict, rng: np.random.Generator) -> tuple[str, dict[str, int | None]]:
    """The FINDINGS text of a study (IU order: heart, mediastinum, lungs, pleura, devices, bones)
    and its 14 CheXpert labels."""
    parts = [heart_sentence(f, rng), mediastinum_sentence(f, rng), lung_sentence(f, rng),
             edema_sentence(f, rng), *pleura_sentences(f, rng), device_sentence(f, rng), bone_sentence(f, rng)]
    parts = [p for p in parts if p is not None]
    return " ".join(text for text, _ in parts), merge_labels([labels for _, labels in parts])


def merge_labels(stated: list[dict[str, int]]) -> dict[str, int | None]:
    """CheXpert aggregation: positive beats negative; "No Finding" is 1 when nothing but support
    devices is positive, else unmentioned (None), as in the CheXpert labeler."""
    labels: dict[str, int | None] = {obs: None for obs in CHEXPERT_OBSERVATIONS}
    for part in stated:
        for obs, value in part.items():
            labels[obs] = value if labels[obs] is None else max(labels[obs], value)
    pathologies = [obs for obs in CHEXPERT_OBSERVATIONS if obs not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if any(labels[obs] == 1 for obs in pathologies) else 1
    return labels


def key_phrases(f: dict) -> list[str]:
    """Ground-truth key phrases: one short grounded phrase per finding present, plus the normal
    statements a report always makes (heart size, pleura), as the rule extractor would phrase them."""
    out = []
    cardio = f["cardiomegaly"]
    out.append(f"{cardio['severity']} cardiomegaly" if cardio else "normal heart size")
    if f["opacity"]:
        zone = ZONE_NAMES[f["opacity"]["level"]].format(side=f["opacity"]["side"])
        out.append(f"focal opacity in the {zone}")
    if f["edema"]:
        out.append(f"{f['edema']['severity']} pulmonary edema")
    eff = f["effusion"]
    if eff:
        noun = "pleural effusions" if eff["side"] == "bilateral" else "pleural effusion"
        out.append(f"{eff['size']} {eff['side']} {noun}")
    else:
        out.append("no pleural effusion")
    ptx = f["pneumothorax"]
    out.append(f"{ptx['size']} {ptx['side']} apical pneumothorax" if ptx else "no pneumothorax")
    if f["device"]:
        out.append(DEVICE_PHRASES[f["device"]["kind"]])
    return out


def report_texts(count: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """`count` phantom reports and their key phrases for fresh findings states, with no image: text for
    pretraining a language-model stand-in (the states come from the generator's stationary distribution, drawn
    with their own seed, so no study of any split is reproduced)."""
    from .findings import first_study

    rng = np.random.default_rng([seed, 2**32 - 7])
    reports, phrases = [], []
    for _ in range(count):
        state = first_study(rng)
        reports.append(write_report(state, rng)[0])
        phrases.append(key_phrases(state))
    return reports, phrases
