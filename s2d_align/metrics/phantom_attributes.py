"""Where a finding is, not only that it is named: attribute accuracy on the phantom set.

CE F1 asks whether a report names a finding. The phantom set knows more: every present finding has a side, a
level, a size, a severity or a device kind (the `findings` column, JSON of `s2d_align.data.phantom.findings`). This
module reads those attributes back from a report and scores them against that truth.

Parsing rules (applied to any report text, generated or reference):
  1. The text is lower-cased and split into sentences at ".", "!", "?" and into clauses at ",", ";" and " and "
     (a clause is the unit an attribute word is attached to: "a left effusion and a right pneumothorax" gives the
     effusion "left" and the pneumothorax "right").
  2. A clause mentions a finding when it holds one of the finding's words (`FINDING_WORDS`); the mention is
     *negated*, and ignored, when a negation cue (`no`, `without`, `free of`, `negative for`, `resolved`) stands in
     the same clause before the finding word. Only positive mentions are read.
  3. In a positive clause the attribute is the set of attribute words present (`ATTRIBUTE_WORDS`): sides `left`,
     `right`, `bilateral`/`both` (a plural "effusions" with no side word also reads as bilateral); levels `upper`,
     `mid`/`midlung`, `lower`/`base`; sizes `small`, `moderate`, `large`; severities `mild`/`mildly`,
     `moderate`/`moderately`; device kinds by their names and abbreviations. A finding named in several positive
     clauses collects the union of their words; `left` + `right` together read as `bilateral` for the side.
  4. A row scores one present finding: *correct* when exactly one value was read and it equals the truth; else
     the reading is `wrong` (one other value), `ambiguous` (several values) or `not stated` (the finding was not
     named positively, or named without that attribute). Every present finding counts, so a report that omits a
     finding loses that row: accuracy = correct / present findings with that attribute.

`ROWS` lists the attributes scored: the five that issue 14 tracks (pneumothorax side, effusion side, opacity side
and level, device kind) and four more (effusion and pneumothorax size, cardiomegaly and edema severity).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

# (row name, finding, attribute key in the findings JSON)
ROWS = (
    ("pneumothorax side", "pneumothorax", "side"),
    ("effusion side", "effusion", "side"),
    ("opacity side", "opacity", "side"),
    ("opacity level", "opacity", "level"),
    ("device kind", "device", "kind"),
    ("effusion size", "effusion", "size"),
    ("pneumothorax size", "pneumothorax", "size"),
    ("cardiomegaly severity", "cardiomegaly", "severity"),
    ("edema severity", "edema", "severity"),
)
HEADLINE_ROWS = tuple(name for name, *_ in ROWS[:5])

FINDING_WORDS = {
    "pneumothorax": r"pneumothora(?:x|ces)",
    "effusion": r"effusions?",
    "opacity": r"opacit(?:y|ies)|consolidation|airspace disease",
    "cardiomegaly": r"cardiomegaly|heart is \w* ?enlarged|enlarged heart",
    "edema": r"edema",
}
ATTRIBUTE_WORDS = {
    "side": {"left": r"\bleft\b", "right": r"\bright\b", "bilateral": r"\bbilateral\b|\bboth\b"},
    "level": {"upper": r"\bupper\b|\bapical\b|\bapex\b", "mid": r"\bmid\b|\bmidlung\b|\bmiddle\b",
              "lower": r"\blower\b|\bbases?\b|\bbasilar\b"},
    "size": {"small": r"\bsmall\b|\btiny\b", "moderate": r"\bmoderate\b", "large": r"\blarge\b"},
    "severity": {"mild": r"\bmild(?:ly)?\b", "moderate": r"\bmoderate(?:ly)?\b"},
    "kind": {"endotracheal tube": r"endotracheal|\bet tube|\bett\b", "picc line": r"picc",
             "nasogastric tube": r"nasogastric|\bng tube|enteric tube|feeding tube"},
}
# a device is named by its kind
FINDING_WORDS["device"] = "|".join(ATTRIBUTE_WORDS["kind"].values())
NEGATION = re.compile(r"\b(?:no|not|without|free of|negative for|resolved|resolution of)\b")
_SENTENCE = re.compile(r"[.!?]+")
_CLAUSE = re.compile(r"[,;]|\band\b")


def positive_clauses(report: str, finding: str) -> list[str]:
    """The clauses of `report` that name `finding` without a negation cue before it (rules 1-2)."""
    word = re.compile(FINDING_WORDS[finding])
    found = []
    for sentence in _SENTENCE.split(report.lower()):
        for clause in _CLAUSE.split(sentence):
            match = word.search(clause)
            if match and not NEGATION.search(clause[:match.start()]):
                found.append(clause)
    return found


def read_attribute(report: str, finding: str, attribute: str) -> set[str]:
    """The attribute values a report states for a finding (rule 3); empty when it states none."""
    values: set[str] = set()
    for clause in positive_clauses(report, finding):
        values |= {value for value, pattern in ATTRIBUTE_WORDS[attribute].items() if re.search(pattern, clause)}
        if attribute == "side" and finding == "effusion" and re.search(r"effusions", clause) and not values:
            values.add("bilateral")
    if attribute == "side" and {"left", "right"} <= values:
        values = (values - {"left", "right"}) | {"bilateral"}
    return values


def judge(stated: set[str], truth: str) -> str:
    """`correct`, `wrong`, `ambiguous` or `not stated` (rule 4)."""
    if len(stated) == 1:
        return "correct" if truth in stated else "wrong"
    if len(stated) > 1:
        return "ambiguous"
    return "not stated"


def attribute_accuracy(predictions: Mapping[str, str], findings: Mapping[str, str | dict]) -> dict:
    """Score every present finding's attributes in `predictions` ({id: report}) against `findings`
    ({id: findings JSON or dict}); ids missing from `predictions` are an error.

    Returns {row name: {"correct", "total", "accuracy", "outcomes": {correct/wrong/ambiguous/not stated: n},
    "confusion": {truth value: {stated value (or "not stated"/"ambiguous"): n}}}}.
    """
    missing = [i for i in findings if i not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} studies have no prediction, e.g. {missing[0]!r}")
    rows = {name: {"correct": 0, "total": 0, "outcomes": Counter(), "confusion": {}} for name, *_ in ROWS}
    for study, state in findings.items():
        state = json.loads(state) if isinstance(state, str) else state
        report = predictions[study]
        for name, finding, attribute in ROWS:
            present = state.get(finding)
            if not present or attribute not in present:
                continue
            truth = present[attribute]
            stated = read_attribute(report, finding, attribute)
            outcome = judge(stated, truth)
            row = rows[name]
            row["total"] += 1
            row["correct"] += outcome == "correct"
            row["outcomes"][outcome] += 1
            said = next(iter(stated)) if len(stated) == 1 else outcome
            row["confusion"].setdefault(truth, Counter())[said] += 1
    for row in rows.values():
        row["accuracy"] = row["correct"] / row["total"] if row["total"] else None
        row["outcomes"] = dict(row["outcomes"])
        row["confusion"] = {truth: dict(counts) for truth, counts in sorted(row["confusion"].items())}
    return rows


def mirror_side(side: str) -> str:
    return {"left": "right", "right": "left"}.get(side, side)


def mirror_agreement(original: Mapping[str, str], flipped: Mapping[str, str],
                     findings: Mapping[str, str | dict]) -> dict:
    """For each sided finding present in a study, whether the report of the left-right flipped image states the
    mirrored side of what the original image's report states (a bilateral effusion stays bilateral).

    A finding counts as *swapped* only when both reports state exactly one side for it and the sides mirror each
    other. Returns {"swapped", "total", "fraction", "per_finding": {finding: [swapped, total]}}.
    """
    per: dict[str, list[int]] = {}
    for study, state in findings.items():
        state = json.loads(state) if isinstance(state, str) else state
        for finding in ("pneumothorax", "effusion", "opacity"):
            if not state.get(finding):
                continue
            a = read_attribute(original[study], finding, "side")
            b = read_attribute(flipped[study], finding, "side")
            ok = len(a) == 1 and len(b) == 1 and mirror_side(next(iter(a))) == next(iter(b))
            counts = per.setdefault(finding, [0, 0])
            counts[0] += ok
            counts[1] += 1
    swapped, total = sum(c[0] for c in per.values()), sum(c[1] for c in per.values())
    return {"swapped": swapped, "total": total, "fraction": swapped / total if total else None, "per_finding": per}


def attribute_table(results: Mapping[str, dict], rows: tuple[str, ...] | None = None) -> str:
    """A markdown table: one line per attribute, one column per system ({system: attribute_accuracy(...)})."""
    names = rows or tuple(name for name, *_ in ROWS)
    systems = list(results)
    lines = ["| attribute | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for name in names:
        cells = []
        for system in systems:
            row = results[system][name]
            cells.append("n/a" if not row["total"] else f"{row['correct']}/{row['total']} ({row['accuracy']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
