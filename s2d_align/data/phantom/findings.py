"""What each phantom study shows: the findings state and its evolution across a patient's studies.

A study's findings are a `dict[str, dict | None]` over `FINDINGS` (None = absent, else the finding's
attributes). Every finding follows its own two-state Markov chain across studies, started from its
stationary distribution, so each finding is present in `PREVALENCE` of all studies whatever the number
of studies per patient, while consecutive studies of a patient stay correlated (interval change).
"""

from __future__ import annotations

import numpy as np

FINDINGS = ("cardiomegaly", "effusion", "opacity", "pneumothorax", "edema", "device")

# P(finding present) per study. Six independent findings at 0.21 leave (1 - 0.21)^6 = 24% of studies
# normal, and keep every finding near the 20-35% band the tiny CPU model needs to learn each one.
PREVALENCE = 0.21
# P(present -> absent) between consecutive studies; P(absent -> present) follows from stationarity.
P_RESOLVE = 0.4
P_APPEAR = P_RESOLVE * PREVALENCE / (1.0 - PREVALENCE)
# P(a persisting finding's attributes are redrawn) at the next study (e.g. effusion grows or shrinks).
P_CHANGE = 0.35

SIDES = ("right", "left")  # patient sides; right is drawn on the image's left (radiological convention)
LEVELS = ("upper", "mid", "lower")
SIZES = ("small", "moderate", "large")
SEVERITIES = ("mild", "moderate")
DEVICES = ("endotracheal tube", "picc line", "nasogastric tube")


def draw_attributes(name: str, rng: np.random.Generator) -> dict:
    """Fresh attributes for a finding that is present."""
    if name == "cardiomegaly":
        return {"severity": str(rng.choice(SEVERITIES))}
    if name == "effusion":
        side = str(rng.choice(("right", "left", "bilateral"), p=(0.4, 0.4, 0.2)))
        return {"side": side, "size": str(rng.choice(SIZES))}
    if name == "opacity":
        return {"side": str(rng.choice(SIDES)), "level": str(rng.choice(LEVELS))}
    if name == "pneumothorax":
        return {"side": str(rng.choice(SIDES)), "size": str(rng.choice(SIZES[:2]))}
    if name == "edema":
        return {"severity": str(rng.choice(SEVERITIES))}
    if name == "device":
        return {"kind": str(rng.choice(DEVICES))}
    raise KeyError(name)


def first_study(rng: np.random.Generator) -> dict[str, dict | None]:
    """Findings of a patient's first study, drawn from the stationary distribution."""
    state = {name: draw_attributes(name, rng) if rng.random() < PREVALENCE else None for name in FINDINGS}
    return resolve_conflicts(state, rng)


def next_study(previous: dict[str, dict | None], rng: np.random.Generator) -> dict[str, dict | None]:
    """The next study of the same patient: findings resolve, appear, persist or change."""
    state: dict[str, dict | None] = {}
    for name in FINDINGS:
        before = previous[name]
        if before is None:
            state[name] = draw_attributes(name, rng) if rng.random() < P_APPEAR else None
        elif rng.random() < P_RESOLVE:
            state[name] = None
        else:
            state[name] = draw_attributes(name, rng) if rng.random() < P_CHANGE else dict(before)
    return resolve_conflicts(state, rng)


def resolve_conflicts(state: dict[str, dict | None], rng: np.random.Generator) -> dict[str, dict | None]:
    """Move a focal opacity out of zones another finding hides, so every finding stays visible.

    An effusion covers the lung base of its side(s); a pneumothorax replaces the apex of its side.
    """
    opacity = state["opacity"]
    if opacity is None:
        return state
    allowed = [(side, level) for side in SIDES for level in LEVELS if not _hidden(state, side, level)]
    if (opacity["side"], opacity["level"]) not in allowed:
        side, level = allowed[int(rng.integers(len(allowed)))]
        state["opacity"] = {"side": side, "level": level}
    return state


def _hidden(state: dict[str, dict | None], side: str, level: str) -> bool:
    effusion, ptx = state["effusion"], state["pneumothorax"]
    if level == "lower" and effusion is not None and effusion["side"] in (side, "bilateral"):
        return True
    return level == "upper" and ptx is not None and ptx["side"] == side


def is_normal(state: dict[str, dict | None]) -> bool:
    """A study with no finding at all (devices count as findings here: they are drawn and reported)."""
    return all(value is None for value in state.values())
