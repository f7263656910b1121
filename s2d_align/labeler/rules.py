"""Offline rule-based CheXpert labeler: 14 observations per report, 1 / 0 / -1 / None.

Built on the CheXpert labeler (Irvin et al., AAAI 2019; stanfordmlgroup/chexpert-labeler, MIT):
its text cleaning, phrase lists (mention + unmention), and aggregation rules are followed as
published; its NegBio dependency-graph negation/uncertainty step is replaced by plain-text cues
(``context.py``) so that the labeler needs no parser and no download.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

from .context import NEGATIVE, POSITIVE, UNCERTAIN, mention_status
from .phrases import OBSERVATIONS, mention_index, unmention_index

__all__ = ["OBSERVATIONS", "Mention", "split_sentences", "extract_mentions", "label_report", "looks_r2gen_cleaned",
           "POSITIVE", "NEGATIVE", "UNCERTAIN"]

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
CARDIOMEGALY = "Cardiomegaly"


@dataclass(frozen=True)
class Mention:
    """One phrase-list match. ``observation == "No Finding"`` marks a match from CheXpert's
    ``no_finding.txt`` list: findings outside the 13 (emphysema, granuloma, scoliosis, ...) whose
    positive or uncertain mention rules "No Finding" out; such mentions get no label of their own."""

    observation: str  # one of OBSERVATIONS
    status: int  # 1 positive, 0 negative, -1 uncertain
    sentence: str  # the sentence it came from, as returned by split_sentences
    start: int  # char span of the matched phrase within `sentence`, widened to whole words
    end: int


def _clean(text: str) -> str:
    """chexpert-labeler's ``Loader.clean``, except that "2.5 cm" keeps its decimal point."""
    text = re.sub(r"and/or", "or", text, flags=re.IGNORECASE)
    text = re.sub(r"(?<=[a-zA-Z])/(?=[a-zA-Z])", " or ", text)
    text = text.replace("..", ".")
    text = re.sub(r"\.(?=[A-Za-z])", ". ", text)  # "clear.No effusion" -> two sentences
    return re.sub(r",(?=\S)", ", ", text)


def split_sentences(text: str) -> list[str]:
    """Cleaned sentences of ``text`` (case kept, whitespace collapsed), split after . ! ? and at
    blank lines; pieces without a letter ("1.", ".") are dropped."""
    pieces: list[str] = []
    for block in re.split(r"\n\s*\n", _clean(text)):
        pieces += re.split(r"(?<=[.!?])\s+", " ".join(block.split()))
    return [p for p in pieces if re.search(r"[A-Za-z]", p)]


def _lower(text: str) -> str:
    """Lower-case without changing the length (a few non-ASCII letters grow when lowered)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _candidates(probe: str, index: dict[str, tuple]) -> dict[str, list[tuple[str, re.Pattern]]]:
    """The patterns whose literal anchor occurs in ``probe``, by observation (a pattern without its
    anchor cannot match: skipping it only saves time)."""
    out: dict[str, list[tuple[str, re.Pattern]]] = {}
    # ~100 three-character keys tested with C substring searches: about twice as fast as building the
    # probe's own trigram set in Python (bench/labeler_speed.py)
    for gram in [g for g in index if g in probe]:
        for obs, anchor, pattern in index[gram]:
            if anchor in probe:
                out.setdefault(obs, []).append((anchor, pattern))
    return out


def _matches(probe: str, patterns, unmention_patterns) -> list[tuple[int, int]]:
    """Spans in ``probe`` (sentence padded by one space each side) of an observation's phrases,
    less those overlapping an unmention phrase, trimmed of the padding spaces."""
    spans = []
    for _, pattern in patterns:
        for m in pattern.finditer(probe):
            start, end = m.span()
            while start < end and probe[start] == " ":
                start += 1
            while end > start and probe[end - 1] == " ":
                end -= 1
            # whole words: the stem "atelecta" reports "atelectasis"
            while start > 1 and probe[start - 1].isalnum():
                start -= 1
            while end < len(probe) - 1 and probe[end].isalnum():
                end += 1
            if end > start:
                spans.append((m.start(), m.end(), start - 1, end - 1))
    # a "non" right before an unmention says the opposite of it: "non-calcified nodules" are nodules (CheXpert's
    # "calcified nodul" matches inside "non-calcified nodul" and drops them; ours keeps them)
    unmentions = [m.span() for _, p in unmention_patterns for m in p.finditer(probe)
                  if not re.search(r"\bnon[- ]?$", probe[max(0, m.start() - 4):m.start()])]
    kept = [(s, e) for ms, me, s, e in spans
            if not any(ms < u_end and me > u_start for u_start, u_end in unmentions)]
    return _drop_nested(kept)


def _drop_nested(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping matches of one observation ("the heart" / "heart") count once: keep the longest."""
    kept: list[tuple[int, int]] = []
    for span in sorted(set(spans), key=lambda s: (s[0] - s[1], s[0])):
        if all(span[1] <= k[0] or span[0] >= k[1] for k in kept):
            kept.append(span)
    return sorted(kept)


_PUNCT = re.compile(r"[^\w\s-]")


def _sentence_mentions(sentence: str) -> list[Mention]:
    return list(_cached_sentence_mentions(sentence))


@lru_cache(maxsize=1 << 16)
def _cached_sentence_mentions(sentence: str) -> tuple[Mention, ...]:
    """Reports repeat template sentences ("No pneumothorax."): each distinct one is labelled once."""
    low = _lower(sentence)
    # punctuation -> space (same length) so that "_line_" matches "line." as it matches "line "
    probe = " " + _PUNCT.sub(" ", low) + " "
    found_patterns = _candidates(probe, mention_index())
    unmentions = _candidates(probe, unmention_index()) if found_patterns else {}
    spans = [(start, end, obs) for obs in OBSERVATIONS if obs in found_patterns
             for start, end in _matches(probe, found_patterns[obs], unmentions.get(obs, ()))]
    found = []
    for start, end, obs in spans:
        if re.match(r"non-?[a-z]", low[start:end]) and not obs == NO_FINDING:
            status = NEGATIVE  # "nonconsolidating airspace disease" denies the consolidation
        else:
            status = mention_status(low, start, end, spans, obs)
        if status is not None:
            found.append(Mention(obs, status, sentence, start, end))
    return tuple(sorted(found, key=lambda m: (m.start, OBSERVATIONS.index(m.observation))))


def extract_mentions(text: str) -> list[Mention]:
    """All phrase-list mentions in ``text`` with their status, sentence by sentence."""
    return [m for sentence in split_sentences(text) for m in _sentence_mentions(sentence)]


def _resolve(statuses: list[int]) -> int:
    """chexpert-labeler ``Aggregator.dict_to_vec``: positive > uncertain > negative."""
    for status in (POSITIVE, UNCERTAIN, NEGATIVE):
        if status in statuses:
            return status
    raise ValueError("no status")


def aggregate(mentions: list[Mention]) -> dict[str, int | None]:
    """chexpert-labeler ``Aggregator.aggregate``: per-observation resolution; a positive or
    uncertain "chf"/"heart failure" (or "cardiac failure") also makes Cardiomegaly uncertain; "No Finding" is 1 when no
    mention other than Support Devices is positive or uncertain, else None (never 0)."""
    found: dict[str, list[int]] = {}
    no_finding = True
    for m in mentions:
        if m.observation != SUPPORT_DEVICES and m.status in (POSITIVE, UNCERTAIN):
            no_finding = False
        if m.observation == NO_FINDING:
            continue
        found.setdefault(m.observation, []).append(m.status)
        # "cardiac failure" (our Edema addition) is CheXpert's "heart failure" said another way
        if m.status != NEGATIVE and m.sentence[m.start:m.end].lower() in ("chf", "heart failure", "cardiac failure"):
            found.setdefault(CARDIOMEGALY, []).append(UNCERTAIN)
    labels: dict[str, int | None] = {obs: (_resolve(found[obs]) if obs in found else None)
                                     for obs in OBSERVATIONS}
    labels[NO_FINDING] = 1 if no_finding else None
    return labels


# R2Gen's cleaning lower-cases, drops , ; : ( ) and joins sentences with " . ": what is left is a
# run of lower-case words and " ." marks. Such text loses the clause boundaries negation scope needs.
_R2GEN_CLEANED = re.compile(r"[^A-Z,;:()]*\S \.")
_warned_cleaned = False


def looks_r2gen_cleaned(text: str) -> bool:
    """True for text that looks like R2Gen's ``clean_report_*`` output ("no pneumothorax small effusion .")."""
    text = text.strip()
    return len(text.split()) >= 3 and bool(_R2GEN_CLEANED.fullmatch(text))


def label_report(text: str) -> dict[str, int | None]:
    """The 14 CheXpert labels of one report (1 positive, 0 negative, -1 uncertain, None unmentioned).

    Give it the raw report. R2Gen-cleaned text is labelled too (a new finding after another one ends a
    negation's reach even without the comma), with a warning the first time one is seen."""
    global _warned_cleaned
    if not _warned_cleaned and looks_r2gen_cleaned(text):
        _warned_cleaned = True
        warnings.warn("labelling text that looks R2Gen-cleaned (lower case, no commas, ' . ' between sentences): "
                      "clause boundaries are gone, so negation scope is guessed; label the raw reports where you "
                      "have them (s2d prepare keeps them in report_raw)", UserWarning, stacklevel=2)
    return aggregate(extract_mentions(text))
