"""Negation and uncertainty of one mention, decided from plain text (no parser, no NegBio).

The CheXpert labeler decides a mention's status with NegBio dependency-graph patterns
(``resources/chexpert_labeler/patterns``), in this order: pre-negation uncertainty
("cannot exclude X", "no new X"), then negation ("no X", "X is normal"), then post-negation
uncertainty ("may represent X", "X or Y", "stable cardiomediastinal silhouette"); a mention no
pattern matches is positive. We keep that order and the cue words, and replace the dependency
graph by a clause plus a window: a cue before the mention reaches forward to it, a cue after it
reaches back, unless the words in between start a new clause.
"""

from __future__ import annotations

import re

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# Nothing reaches across these (a new clause with its own subject and polarity).
_CLAUSE_BREAK = re.compile(
    r"[;:]|\b(?:but|however|although|though|whereas|except|aside from|apart from|which|while)\b")
_VERB = r"\b(?:is|are|was|were|appears?|remains?|seems?|measures?|has|have|had|shows?|demonstrates?)\b"
# "no effusion is seen, and the heart is enlarged": the negated clause ended with its predicate.
# (A transitive verb keeps its objects negated: "do not demonstrate infiltrate or effusion".)
_FINISHED_CLAUSE = re.compile(r"\b(?:is|are|was|were|seen|identified|noted|present|evident|visualized|"
                              r"appreciated)\b.*(?:,|\band\b)")
# Behind a mention, one verb may belong to it ("X is stable and within normal limits"); a second
# verb after "and"/"," means another clause ("X is enlarged and the lungs are normal").
_TWO_CLAUSES = re.compile(_VERB + r".*(?:,|\band\b|\bor\b).*" + _VERB)
_THERE_IS = re.compile(r"\bthere (?:is|are|was|were|has|have)\b")

# Words naming the heart/mediastinum itself: CheXpert's "stable cardiomediastinal silhouette"
# rule (post_negation_uncertainty.txt) makes only these uncertain when stable/unchanged.
_CARDIO_WORDS = re.compile(
    r"cardiomediastinal|pericardial|mediastinal|mediastinum|cardiomediastinum|contour|"
    r"configuration|silhouette|size|heart|shadow")


def _cues(*patterns: str) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(p) for p in patterns)


_EXCLUDED = r"(?:be )?(?:\w+ly )?(?:excluded|ruled out)\b"
# --- pre-negation uncertainty (checked first) ---
_PRE_UNC_FWD = _cues(
    r"\b(?:cannot|can ?not|could not|can't|difficult to|unable to) (?:\w+ly )?(?:exclude|rule out)\b",
    r"\bno new\b",
    r"\bobscur(?:ed|es|ing)\b",
)
_PRE_UNC_BWD = _cues(
    r"\b(?:cannot|can ?not|could not|can't|may not|not) " + _EXCLUDED,
    r"\b(?:not (?:well|clearly)|poorly|incompletely)[ -](?:seen|visualized|evaluated|assessed)\b",
    r"\bobscur(?:ed|es|ing)\b",
    r"\bnot appreciated\b",
)
# --- negation ---
_NEG_FWD = _cues(
    # "no change in the mediastinum" does not negate the mediastinum; "no new X" is uncertain
    r"\bno\b(?! (?:\w+ )?(?:change|changed|longer|new)\b)",
    r"\bnot\b(?! (?:\w+ )?(?:change|changed)\b)",
    r"\b(?:without|nor|negative for|free (?:of|from)|absence of|absent|rather than|resolution of|"
    r"resolved|removal of|removed|clear(?:ed|ing)? of|history of|disappearance of|drainage of|"
    r"exclude[sd]?|rule[sd]? out)\b",
)
_NEG_NEAR_FWD = _cues(r"\b(?:normal|unremarkable)\b")  # "normal heart size": an adjective's reach
_NEG_BWD = _cues(
    r"\b(?:normal|unremarkable|wnl)\b",
    r"\bnot (?:\w+ )?(?:enlarged|seen|identified|present|evident|visualized|visible|demonstrated|"
    r"noted|detected|shown)\b",
    r"\b(?:resolved|cleared|removed|absent)\b",
    r"\bno longer\b",
    r"\b(?:is|are|was|were) (?:negative|excluded)\b",
    r"\bruled out\b",
)
# --- post-negation uncertainty ---
_UNC_FWD = _cues(
    r"\b(?:possible|possibly|presumabl[ey]|presumed|probable|probably|questionabl[ey]|questioned|"
    r"question of|suspect(?:ed)?|suspicious|suspicion|suggestion of|suggestive of|suggest(?:s|ing)?|"
    r"concern(?:ing)? for|worrisome|may|might|could|would|maybe|differential|"
    r"consider(?:ed)?|favou?r(?:ed|s)?|equivocal|indeterminate|less likely|correlat(?:e|ion))\b",
)
_UNC_NEAR_FWD = _cues(r"\bborderline\b", r"\b(?:versus|vs)\b")
# "atelectasis or consolidation": "or" joins two findings, so only an adjacent one (one word apart)
_OR = _cues(r"\bor\b")
_UNC_BWD = _cues(
    r"\b(?:may|might|could|can|would|possibly) (?:also |still )?(?:be )?(?:present|seen|noted|"
    r"identified|visualized|suspected|appear|exist)\b",
    r"\b(?:is|are) (?:suspected|questioned|possible|probable|questionable)\b",
)
_UNC_NEAR_BWD = _cues(r"\bborderline\b", r"\b(?:versus|vs)\b")
# CheXpert (post_negation_uncertainty.txt) keeps these Edema mentions uncertain unless negated
_ALWAYS_UNCERTAIN = re.compile(r"vascular congestion|pulmonary congestion|indistinctness|vascular prominence")
_STABLE_FWD = _cues(r"\b(?:stable|unchanged|no (?:\w+ )?change)\b")
_STABLE_BWD = _cues(r"\b(?:stable|unchanged|not changed|similar|in the interval)\b")


def clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The clause around ``text[start:end]``: from the last break before it to the next after it."""
    left = 0
    for match in _CLAUSE_BREAK.finditer(text, 0, start):
        left = match.end()
    nxt = _CLAUSE_BREAK.search(text, end)
    return left, (nxt.start() if nxt else len(text))


def _forward_ok(window: str) -> bool:
    """A cue before the mention reaches it across ``window`` (the words in between)."""
    return not (_THERE_IS.search(window) or _FINISHED_CLAUSE.search(window))


def _near_forward_ok(window: str, max_words: int = 5) -> bool:
    """An adjective-like cue ("normal", "or") reaches only the noun phrase right after it."""
    # "normal heart size, mediastinum" is a list; "heart size normal, small effusion" is not
    return (len(window.split()) <= max_words and not window.lstrip().startswith(",")
            and not re.search(r"\bwith\b|" + _VERB, window))


def _backward_ok(window: str, max_words: int = 12, neutral: bool = False) -> bool:
    """A cue after the mention reaches back across ``window`` ("heart size and X are normal").
    ``neutral``: the mention names anatomy ("cardiac silhouette"), not a finding, so a comma list
    without "and" ("silhouette, vascular pattern are normal") still reaches it."""
    if len(window.split()) > max_words or re.search(r"\b(?:with|without|no|not|there)\b", window):
        return False
    if _TWO_CLAUSES.search(window) or re.match(r"\W*otherwise\b", window):  # "effusion, otherwise normal"
        return False
    if neutral and not re.search(r"enlarg|widen|large|increas|promin|abnormal", window):
        return True
    if "," in window:
        # a list ends in "and"/"or" ("heart size, contour, and vascularity are normal"); a comma
        # without one starts a new clause ("mild cardiomegaly, lungs are normal")
        tail = window.rsplit(",", 1)[1]
        verb = re.search(_VERB, tail)
        return bool(re.search(r"\b(?:and|or)\b", tail[: verb.start() if verb else len(tail)]))
    return True


def _near_backward_ok(window: str, max_words: int = 4) -> bool:
    return len(window.split()) <= max_words and "," not in window


def _hit_forward(pre: str, cues, ok) -> bool:
    return any(ok(pre[m.end():]) for cue in cues for m in cue.finditer(pre))


def _hit_backward(post: str, cues, ok) -> bool:
    return any(ok(post[: m.start()]) for cue in cues for m in cue.finditer(post))


def mention_status(sentence: str, start: int, end: int) -> int:
    """Status of the mention at ``sentence[start:end]``; ``sentence`` must be lower-cased."""
    left, right = clause_bounds(sentence, start, end)
    pre, post = sentence[left:start], sentence[end:right]
    if _hit_forward(pre, _PRE_UNC_FWD, _forward_ok) or _hit_backward(post, _PRE_UNC_BWD, _backward_ok):
        return UNCERTAIN
    neutral = bool(_CARDIO_WORDS.search(sentence[start:end]))
    if (_hit_forward(pre, _NEG_FWD, _forward_ok) or _hit_forward(pre, _NEG_NEAR_FWD, _near_forward_ok)
            or _hit_backward(post, _NEG_BWD, lambda w: _backward_ok(w, neutral=neutral))):
        return NEGATIVE
    if (_ALWAYS_UNCERTAIN.search(sentence[start:end]) or _hit_forward(pre, _UNC_FWD, _forward_ok) or _hit_forward(pre, _UNC_NEAR_FWD, _near_forward_ok)
            or _hit_backward(post, _UNC_BWD, _backward_ok)
            or _hit_backward(post, _UNC_NEAR_BWD, _near_backward_ok)
            or _hit_forward(pre, _OR, lambda w: _near_forward_ok(w, 1))
            or _hit_backward(post, _OR, lambda w: _near_backward_ok(w, 1))):
        return UNCERTAIN
    enlarged = re.search(r"enlarg|widen", sentence[max(left, start - 30):min(right, end + 30)])
    if neutral and not enlarged and (
            _hit_forward(pre, _STABLE_FWD, _near_forward_ok)
            or _hit_backward(post, _STABLE_BWD, lambda w: _near_backward_ok(w, 6))):
        return UNCERTAIN
    return POSITIVE
