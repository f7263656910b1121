"""bench.grounding_probe's teacher-forced side-word accuracy, against an oracle and an anti-oracle model."""

import re

import torch
from datasets import Dataset

from bench.grounding_probe import SIDE_WORDS, side_word_accuracy


class _Oracle(torch.nn.Module):
    """Logits that put all mass on the true next token (`right=True`) or on a wrong side word (`right=False`)."""

    def __init__(self, processor, right: bool):
        super().__init__()
        self.processor, self.right = processor, right
        self.sides = [processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("left", "right")]

    def forward(self, input_ids, **_):
        vocab = len(self.processor.tokenizer)
        logits = torch.zeros(*input_ids.shape, vocab + 8)
        following = torch.roll(input_ids, -1, dims=1)  # what position t should predict
        for b, t in torch.nonzero(torch.ones_like(input_ids)).tolist():
            token = int(following[b, t])
            if not self.right and token in self.sides:  # the next side word in SIDE_WORDS' order instead
                token = self.sides[(self.sides.index(token) + 1) % len(self.sides)]
            logits[b, t, token] = 10.0
        return type("Out", (), {"logits": logits})()


def test_side_word_accuracy_counts_each_side_word_of_the_reports(tiny, radiographs):
    _, processor = tiny
    reports = ["There is a small left pneumothorax. Right lung is clear.", "Small bilateral pleural effusions.",
               "No pneumothorax. The right heart border is normal."]
    split = Dataset.from_dict({"image_paths": [[radiographs[0]]] * 3, "report": reports,
                               "key_phrases": [["left pneumothorax"], ["bilateral effusion"], []]})
    # the report tokens are space-led: "Right" opening a sentence is another token than " right" and is not counted
    sides_in_text = sum(len(re.findall(r"(?<= )(?:left|right)\b", r)) for r in reports)
    perfect = side_word_accuracy(_Oracle(processor, True), processor, split)
    wrong = side_word_accuracy(_Oracle(processor, False), processor, split)
    # this tiny vocabulary splits " bilateral" into pieces: it is left out, and the other two are scored
    assert perfect["words"] == ["left", "right"]
    assert perfect["total"] == wrong["total"] == sides_in_text == 2
    assert perfect["accuracy"] == 1.0 and wrong["accuracy"] == 0.0
