"""Offline rule-based key phrases, built on the project's rule labeler (`s2d_align.labeler.rules`).

Every labeler mention becomes one short phrase: its status decides the frame ("no pneumothorax",
"possible atelectasis", "small left pleural effusion"); severity, laterality and anatomy words come from
the mention's own clause (the words between it and its neighbouring mentions or clause breaks), so
"moderate left pleural effusion and small right pleural effusion" gives two correctly sided phrases.
Normal statements about the heart and mediastinum become "normal heart size" / "normal
cardiomediastinal silhouette" rather than "no cardiomegaly", as radiologists phrase them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..labeler.rules import NEGATIVE, POSITIVE, UNCERTAIN, Mention, extract_mentions
from .vocab import (ANATOMY_ADJECTIVES, CLAUSE_BREAK, DESCRIPTORS, FILLERS, LATERALITY, LOCATION_AFTER,
                    SEVERITY, WORD)

# Canonical heads where the matched phrase-list stem is not itself a good noun phrase.
HEAD_BY_WORD = {
    "effusion": "pleural effusion", "effusions": "pleural effusions", "pneumothoraces": "pneumothorax",
    "atelectatic": "atelectasis", "consolidative": "consolidation",
    "consolidated": "consolidation", "cardiac enlargement": "cardiomegaly", "enlarged heart": "cardiomegaly",
}
# "edema" alone is pulmonary edema; with its own modifier ("interstitial edema") it keeps that one.
BARE_HEAD = {"edema": "pulmonary edema"}
# Observations whose every positive mention means the same head whatever words matched ("the heart").
FIXED_HEAD = {"Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "enlarged cardiomediastinum"}
NORMAL_PHRASE = {"Cardiomegaly": "normal heart size", "Enlarged Cardiomediastinum": "normal cardiomediastinal silhouette"}
# Words that are a modifier when matched but need their noun ("degenerative" -> "degenerative changes").
ADJECTIVE_ENDINGS = ("ive", "ic", "ed", "al", "ous", "ary")
MAX_MODIFIERS = 5
GRADES = {"mild", "moderate", "severe", "marked", "minimal", "slight"}  # of cardiomegaly ("large" is not)
NOT_A_NOUN = {"is", "are", "was", "were", "and", "or", "with", "of", "in", "at", "to", "xxxx", "the", "a", "an",
              "seen", "noted", "present", "again", "identified", "which", "that", "may", "could", "without"}
# A severity after the head only in a copular predicate ("the heart is mildly enlarged", "effusion is
# small"); a side only as "bilaterally" / "on the right". Anything else there belongs to another finding.
TAIL_SEVERITY = re.compile(r"^\s*(?:is|are|appears?|remains?|seems?)\s+(?:again\s+|now\s+|still\s+)?(?P<word>[a-z]+)\b")
TAIL_SIDE = re.compile(r"\b(?:bilaterally|on both sides|on the (?P<side>right|left))\b")
STABLE = re.compile(r"\b(?:stable|unchanged)\b")


@dataclass(frozen=True)
class Clause:
    """The text a mention owns: words before it (back to the previous mention or clause break) and after."""

    before: list[str]
    after: str


def extract_rule_phrases(report: str) -> list[str]:
    """Key phrases of one report, in report order, without duplicates."""
    phrases: list[str] = []
    mentions = extract_mentions(report)
    by_sentence: dict[str, list[Mention]] = {}
    for m in mentions:
        by_sentence.setdefault(m.sentence, []).append(m)
    for sentence_mentions in by_sentence.values():
        for phrase in sentence_phrases(sentence_mentions):
            if phrase and phrase not in phrases:
                phrases.append(phrase)
    return phrases


def sentence_phrases(mentions: list[Mention]) -> list[str]:
    """One phrase per mention of a sentence. Folded into the next mention: a device "tip" beside its
    device, a mention directly followed by another ("PICC" + "line", "tracheostomy" + "tube"), and an
    adjective mention a few modifier words before another ("calcified" + "right hilar" + "granulomas")."""
    low = mentions[0].sentence.lower()
    mentions = _without_overlaps(sorted(mentions, key=lambda m: (m.start, m.start - m.end)), low)
    kept = [m for i, m in enumerate(mentions) if not _folded(low, m, mentions, i)]
    out = []
    for i, m in enumerate(kept):
        prev_end = kept[i - 1].end if i else 0
        next_start = kept[i + 1].start if i + 1 < len(kept) else len(low)
        out.append(compose(m, clause_of(low, m, prev_end, next_start)))
    return out


def _without_overlaps(mentions: list[Mention], low: str) -> list[Mention]:
    """One mention per stretch of words: "nodular opacity" (lesion) swallows its "opacity" (opacity),
    "pleural thickening" its "thickening". A "No Finding"-list word used as a place ("in the fissures")
    is no finding at all."""
    kept: list[Mention] = []
    for m in mentions:
        if kept and m.start < kept[-1].end:
            continue
        if m.observation == "No Finding" and re.search(r"\b(?:in|of|along|within) the $", low[:m.start]):
            continue
        kept.append(m)
    return kept


def _folded(low: str, m: Mention, mentions: list[Mention], i: int) -> bool:
    if m.observation == "Support Devices" and low[m.start:m.end] == "tip":
        return sum(x.observation == "Support Devices" for x in mentions) > 1
    nxt = mentions[i + 1] if i + 1 < len(mentions) else None
    if nxt is None or nxt.status != m.status or low[nxt.start:nxt.end] == "tip":  # tips fold, not absorb
        return False
    between = WORD.findall(low[m.end:nxt.start])
    if not low[m.end:nxt.start].strip():  # a compound noun: "picc" + "line", "tracheostomy" + "tube"
        return True
    return low[m.start:m.end].endswith(ADJECTIVE_ENDINGS) and len(between) <= 3 and all(map(_is_modifier, between))


def _is_modifier(word: str) -> bool:
    base = word.removesuffix("-sized").removesuffix("-sided")
    return word in LATERALITY or any(base in vocab for vocab in (SEVERITY, ANATOMY_ADJECTIVES, DESCRIPTORS, FILLERS))


def clause_of(low: str, m: Mention, prev_end: int, next_start: int) -> Clause:
    """Words owned by mention `m` of the lower-cased sentence `low`."""
    before = low[prev_end:m.start]
    breaks = list(CLAUSE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end():]
    after = low[m.end:next_start]
    stop = CLAUSE_BREAK.search(after)
    return Clause(WORD.findall(before), after[:stop.start()] if stop else after)


def compose(m: Mention, clause: Clause) -> str:
    """The phrase for one mention: frame (no / possible / -) + modifiers + head + location, where the
    modifiers are the severity/side/descriptor words right before the head, in text order, plus a
    severity or side stated after it ("the heart is mildly enlarged", "effusions seen bilaterally")."""
    if m.observation in NORMAL_PHRASE:
        if m.status == NEGATIVE:
            return NORMAL_PHRASE[m.observation]
        # CheXpert makes a "stable cardiomediastinal silhouette" uncertain; as a phrase, say what it says.
        if m.status == UNCERTAIN and STABLE.search(" ".join(clause.before) + " " + clause.after):
            return NORMAL_PHRASE[m.observation].replace("normal", "stable")
    head, trailing = head_of(m)
    severity, side, modifiers = modifiers_before(clause.before)
    after = clause.after.strip()
    found = LOCATION_AFTER.search(after)
    location, tail = "", after
    if found:
        tail = after[: found.start("prep") if found["prep"] else found.start("bare_side")]
        loc_side = (found["side"] or found["bare_side"] or "").strip()
        article = "" if loc_side == "both" else "the"  # "in both lung bases"
        location = " ".join(w for w in (found["prep"] or _default_prep(found["noun"]), article, loc_side,
                                        found["level"], found["noun"]) if w)
        # IU de-identification masks the word after "costophrenic"; "angle" is the usual one there.
        location = " ".join(location.split()).replace("costophrenic xxxx", "costophrenic angle")
    extra = []
    tail_severity = TAIL_SEVERITY.match(tail)
    if not severity and tail_severity and tail_severity["word"] in SEVERITY:
        extra.append(SEVERITY[tail_severity["word"]])
    tail_side = TAIL_SIDE.search(tail)
    if not side and tail_side and not (found and (found["side"] or found["bare_side"])):
        extra.append(tail_side["side"] or "bilateral")
    if m.observation in FIXED_HEAD:  # "the heart", "cardiac silhouette": only a grade of enlargement matters
        head, modifiers, extra = FIXED_HEAD[m.observation], [w for w in modifiers + extra if w in GRADES], []
    if head in BARE_HEAD and not modifiers:
        head = BARE_HEAD[head]
    head_words = set(head.split())
    modifiers = [w for w in _merge(modifiers, extra) if w not in head_words]  # "pleural" + "pleural effusion"
    frame = {NEGATIVE: "no", UNCERTAIN: "possible", POSITIVE: ""}[m.status]
    words = " ".join(w for w in (frame, *modifiers, head, trailing, location) if w).split()
    # IU de-identification leaves "XXXX" in place of words ("sternotomy XXXX"): never part of a phrase.
    return " ".join(w for w in words if w != "xxxx")


def _default_prep(noun: str) -> str:
    if noun.endswith(("base", "bases", "apex", "apices")):
        return "at"
    return "of" if noun in ("hemidiaphragm", "spine", "thoracic spine", "aorta", "thoracic aorta") else "in"


def _merge(modifiers: list[str], extra: list[str]) -> list[str]:
    """Modifiers stated after the head go in front, a side after any leading severity ("mild bilateral")."""
    words = list(modifiers)
    for word in extra:
        at = 0
        if word not in SEVERITY.values():
            while at < len(words) and words[at] in SEVERITY.values():
                at += 1
        words.insert(at, word)
    return words


def head_of(m: Mention) -> tuple[str, str]:
    """(head, trailing noun): the matched words, canonicalised; an adjective match keeps the noun
    that follows it ("degenerative changes", "calcified granuloma")."""
    low = m.sentence.lower()
    matched = " ".join(WORD.findall(low[m.start:m.end]))
    head = HEAD_BY_WORD.get(matched, matched)
    trailing = ""
    if m.observation in ("No Finding", "Support Devices", "Lung Lesion") and matched.endswith(ADJECTIVE_ENDINGS):
        following = WORD.findall(low[m.end:])
        if following and not _is_modifier(following[0]) and following[0] not in NOT_A_NOUN:
            trailing = following[0]
    return head, trailing


def modifiers_before(words: list[str]) -> tuple[str, str, list[str]]:
    """Severity, side and kept modifiers from the run of modifier words right before the head."""
    run: list[str] = []
    for word in reversed(words):
        base = word.removesuffix("-sized").removesuffix("-sided") if word not in LATERALITY else word
        known = base in SEVERITY or base in LATERALITY or word in LATERALITY or base in ANATOMY_ADJECTIVES \
            or base in DESCRIPTORS or base in FILLERS
        if not known or len(run) >= MAX_MODIFIERS:
            break
        run.insert(0, word)
    severity = side = ""
    kept = []
    for word in run:  # text order kept ("calcified right hilar granulomas"), words normalised
        base = word.removesuffix("-sized")
        if base in FILLERS:
            continue
        if base in SEVERITY:
            severity = severity or SEVERITY[base]
            kept.append(SEVERITY[base])
        elif word in LATERALITY:
            side = side or LATERALITY[word]
            kept.append(LATERALITY[word])
        else:
            kept.append(base)
    return severity, side, kept
