"""RadGraph key phrases (the paper's source): entities + relations of a report -> short descriptions.

Needs the `radgraph` package (`pip install 's2d-align[radgraph]'`) AND its model weights already in the
local Hugging Face cache: s2d-align never downloads, so the model is loaded with HF_HUB_OFFLINE=1 and a
missing model is a clear error. Composition follows the paper (section "Stage 3"): every observation
RadGraph marks "definitely present" becomes one description made of its modifiers, itself, and the
anatomy it is located at (with that anatomy's modifiers), in report word order.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

DEFAULT_MODEL = os.environ.get("S2D_RADGRAPH_MODEL", "radgraph-xl")
PRESENT = ("Observation::definitely present", "OBS-DP")
ANATOMY = ("Anatomy::definitely present", "ANAT-DP")


@contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@lru_cache(maxsize=2)
def load_radgraph(model: str = DEFAULT_MODEL):
    """The RadGraph annotator, from the local cache only. Raises ValueError with what to do otherwise."""
    try:
        from radgraph import RadGraph
    except ImportError:
        raise ValueError("key-phrase backend 'radgraph' needs the radgraph package: pip install 's2d-align[radgraph]' "
                         "(or use --keyphrases rules, the offline default)") from None
    try:
        with _offline():
            try:
                return RadGraph(model=model)  # radgraph >= 0.1.14
            except TypeError:
                return RadGraph(model_type=model)  # older releases
    except Exception as err:  # noqa: BLE001 - any loading failure means "weights not here"
        raise ValueError(f"RadGraph model {model!r} is not available locally ({type(err).__name__}: {err}); "
                         "s2d-align never downloads it: place its weights in the Hugging Face cache first, "
                         "or use --keyphrases rules") from None


def extract_radgraph_phrases(report: str, model: str = DEFAULT_MODEL) -> list[str]:
    annotations = load_radgraph(model)([report])
    return phrases_from_annotation(next(iter(annotations.values())))


def phrases_from_annotation(annotation: dict) -> list[str]:
    """Descriptions of the positive observations of one RadGraph annotation
    (`{"text": ..., "entities": {id: {tokens, label, start_ix, end_ix, relations}}}`)."""
    entities = annotation.get("entities", {})
    modifiers: dict[str, list[str]] = {}  # entity id -> ids of the entities that modify it
    for eid, ent in entities.items():
        for relation, target in ent.get("relations", []):
            if relation == "modify":
                modifiers.setdefault(target, []).append(eid)
    phrases = []
    for eid, ent in sorted(entities.items(), key=lambda kv: kv[1]["start_ix"]):
        if ent["label"] not in PRESENT or any(r == "modify" for r, _ in ent.get("relations", [])):
            continue  # only heads of positive observations (a modifier is part of its head's phrase)
        own = _ordered(entities, _with_modifiers(eid, modifiers))
        places = [t for r, t in ent.get("relations", []) if r == "located_at" and t in entities]
        where = [_ordered(entities, _with_modifiers(p, modifiers)) for p in places]
        phrase = own + (" in the " + " and ".join(where) if where else "")
        if phrase not in phrases:
            phrases.append(phrase)
    return phrases


def _with_modifiers(eid: str, modifiers: dict[str, list[str]]) -> list[str]:
    """The entity and everything modifying it, transitively ("right" -> "lower" -> "lobe")."""
    found, todo = [eid], [eid]
    while todo:
        for m in modifiers.get(todo.pop(), []):
            if m not in found:
                found.append(m)
                todo.append(m)
    return found


def _ordered(entities: dict, ids: list[str]) -> str:
    return " ".join(entities[i]["tokens"] for i in sorted(set(ids), key=lambda i: entities[i]["start_ix"]))
