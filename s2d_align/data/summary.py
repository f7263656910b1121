"""`prepare_summary.json`: what was built, what was skipped and why, and with which options."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from datasets import DatasetDict

SUMMARY_NAME = "prepare_summary.json"


class SkipLog:
    """Counts skipped samples per reason and keeps a few example ids per reason."""

    def __init__(self, examples: int = 5):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples

    def skip(self, reason: str, sample_id: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self._keep:
            shown.append(sample_id)

    def as_dict(self) -> dict:
        return {"total": sum(self.counts.values()), "by_reason": dict(self.counts), "examples": self.examples}


def split_counts(dsd: DatasetDict) -> dict[str, int]:
    return {split: len(ds) for split, ds in dsd.items()}


def write_summary(out_dir: str | Path, dsd: DatasetDict, options: dict, skipped: SkipLog | None = None,
                  **sections) -> dict:
    """Write `out_dir/prepare_summary.json` and return it."""
    summary = {
        "counts": split_counts(dsd),
        "total": sum(split_counts(dsd).values()),
        "skipped": (skipped or SkipLog()).as_dict(),
        "options": options,
        **sections,
    }
    path = Path(out_dir) / SUMMARY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    return summary
