"""CheXpert observation labelers: ``rules`` (offline default) and ``chexbert`` (needs weights).

``from s2d_align.labeler import label_report, extract_mentions, OBSERVATIONS`` gives the rule
labeler; ``get_labeler(name)`` returns a batch function ``list[str] -> list[dict]`` for either.
"""

from .rules import (NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, Mention, aggregate,
                    extract_mentions, label_report, split_sentences)

__all__ = ["OBSERVATIONS", "Mention", "split_sentences", "extract_mentions", "label_report",
           "aggregate", "POSITIVE", "NEGATIVE", "UNCERTAIN"]
