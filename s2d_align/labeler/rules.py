"""Offline rule-based CheXpert labeler: 14 observations per report, 1 / 0 / -1 / None.

Built on the CheXpert labeler (Irvin et al., AAAI 2019; stanfordmlgroup/chexpert-labeler, MIT):
its text cleaning, phrase lists (mention + unmention), and aggregation rules are followed as
published; its NegBio dependency-graph negation/uncertainty step is replaced by plain-text cues
(``context.py``) so that the labeler needs no parser and no download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .context import NEGATIVE, POSITIVE, UNCERTAIN, mention_status
from .phrases import OBSERVATIONS, mention_patterns, unmention_patterns

__all__ = ["OBSERVATIONS", "Mention", "split_sentences", "extract_mentions", "label_report",
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
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _matches(probe: str, observation: str) -> list[tuple[int, int]]:
    """Spans in ``probe`` (sentence padded by one space each side) of the observation's phrases,
    less those overlapping an unmention phrase, trimmed of the padding spaces."""
    unmentions = [m.span() for p in unmention_patterns().get(observation, ()) for m in p.finditer(probe)]
    spans = []
    for pattern in mention_patterns()[observation]:
        for m in pattern.finditer(probe):
            start, end = m.span()
            if any(start < u_end and end > u_start for u_start, u_end in unmentions):
                continue
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
                spans.append((start - 1, end - 1))
    return _drop_nested(spans)


def _drop_nested(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping matches of one observation ("the heart" / "heart") count once: keep the longest."""
    kept: list[tuple[int, int]] = []
    for span in sorted(set(spans), key=lambda s: (s[0] - s[1], s[0])):
        if all(span[1] <= k[0] or span[0] >= k[1] for k in kept):
            kept.append(span)
    return sorted(kept)


def _sentence_mentions(sentence: str) -> list[Mention]:
    low = _lower(sentence)
    # punctuation -> space (same length) so that "_line_" matches "line." as it matches "line "
    probe = " " + re.sub(r"[^\w\s-]", " ", low) + " "
    found = []
    for obs in OBSERVATIONS:
        for start, end in _matches(probe, obs):
            found.append(Mention(obs, mention_status(low, start, end), sentence, start, end))
    return sorted(found, key=lambda m: (m.start, OBSERVATIONS.index(m.observation)))


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
    uncertain "chf"/"heart failure" also makes Cardiomegaly uncertain; "No Finding" is 1 when no
    mention other than Support Devices is positive or uncertain, else None (never 0)."""
    found: dict[str, list[int]] = {}
    no_finding = True
    for m in mentions:
        if m.observation != SUPPORT_DEVICES and m.status in (POSITIVE, UNCERTAIN):
            no_finding = False
        if m.observation == NO_FINDING:
            continue
        found.setdefault(m.observation, []).append(m.status)
        if m.status != NEGATIVE and m.sentence[m.start:m.end].lower() in ("chf", "heart failure"):
            found.setdefault(CARDIOMEGALY, []).append(UNCERTAIN)
    labels: dict[str, int | None] = {obs: (_resolve(found[obs]) if obs in found else None)
                                     for obs in OBSERVATIONS}
    labels[NO_FINDING] = 1 if no_finding else None
    return labels


def label_report(text: str) -> dict[str, int | None]:
    """The 14 CheXpert labels of one report (1 positive, 0 negative, -1 uncertain, None unmentioned)."""
    return aggregate(extract_mentions(text))
