"""Optional LLM rewrite of extracted key phrases into fluent clinical phrases (paper, appendix A).

The paper feeds RadGraph entity/relation descriptions to an LLM with a few-shot prompt whose
demonstrations are drawn at random from a radiologist-written pool. That pool and the exact prompt
text (its Figure 3) are not published in the text we have, so the instruction below restates appendix
A's stated purpose and the demonstration pool is ours (written in real IU X-Ray wording); like the
paper, each input gets `num_examples` distinct demonstrations drawn at random (seeded by the input, so
a rerun builds the same prompt). Any local causal LM works (`AutoModelForCausalLM`, a folder path;
nothing is downloaded). Outputs are cached on disk in a JSON file keyed by a hash of model id + prompt,
so a rerun never regenerates. The rewrite is never needed for inference.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

INSTRUCTION = (
    "You are an experienced radiologist. Each input lists findings extracted from a chest X-ray report as "
    "entity-relation descriptions. Rewrite every description into a short, fluent, clinically precise key "
    "phrase that keeps its presence or absence, laterality, severity and anatomical location. Do not add "
    "findings. Answer with one phrase per line, each line starting with \"- \"."
)

# (input descriptions, gold phrases): the demonstration pool.
EXAMPLE_POOL: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("effusion pleural small left",), ("small left pleural effusion",)),
    (("opacity in the base right", "atelectasis"), ("opacity at the right base", "possible atelectasis")),
    (("cardiomegaly mild",), ("mild cardiomegaly",)),
    (("pneumothorax apical right small",), ("small right apical pneumothorax",)),
    (("edema pulmonary interstitial mild",), ("mild interstitial pulmonary edema",)),
    (("granuloma calcified in the lobe upper right",), ("calcified granuloma in the right upper lobe",)),
    (("changes degenerative in the spine thoracic",), ("degenerative changes of the thoracic spine",)),
    (("tube endotracheal", "catheter venous central in the jugular right"),
     ("endotracheal tube in place", "right internal jugular central venous catheter")),
    (("effusions pleural bilateral moderate", "consolidation in the bases"),
     ("moderate bilateral pleural effusions", "consolidation at both lung bases")),
    (("hernia hiatal large",), ("large hiatal hernia",)),
)


def build_prompt(phrases: list[str], num_examples: int = 3, seed: int | None = None) -> str:
    """The few-shot prompt for one input: instruction, `num_examples` demonstrations, the input."""
    key = seed if seed is not None else int(hashlib.sha256("\n".join(phrases).encode()).hexdigest()[:8], 16)
    examples = random.Random(key).sample(EXAMPLE_POOL, k=min(num_examples, len(EXAMPLE_POOL)))
    blocks = [INSTRUCTION, ""]
    for inputs, outputs in examples:
        blocks += ["Input:", *(f"- {p}" for p in inputs), "Output:", *(f"- {p}" for p in outputs), ""]
    blocks += ["Input:", *(f"- {p}" for p in phrases), "Output:"]
    return "\n".join(blocks) + "\n"


def parse_output(text: str) -> list[str]:
    """The phrases of a completion: its leading "- " lines, up to the first other non-empty line
    (the model starting a new "Input:" block, say)."""
    phrases: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            if phrases:
                break
            continue
        if not line.startswith("-"):
            break
        phrase = " ".join(line.lstrip("-").split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


class KeyPhraseRewriter:
    """Rewrites key-phrase lists with a local causal LM, caching every result in `cache_path`."""

    def __init__(self, model_path: str | os.PathLike, cache_path: str | os.PathLike, *, num_examples: int = 3,
                 max_new_tokens: int = 96, model_id: str | None = None, save_every: int = 100):
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise FileNotFoundError(f"rewrite model folder not found: {self.model_path}")
        self.model_id = model_id or str(self.model_path.resolve())
        self.cache_path = Path(cache_path)
        self.num_examples, self.max_new_tokens = num_examples, max_new_tokens
        self.cache: dict = json.loads(self.cache_path.read_text()) if self.cache_path.is_file() else {}
        self.generations = 0  # how many times the model actually ran (cache misses)
        self.save_every, self._unsaved = save_every, 0
        self._model = self._tokenizer = None

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model_id}\n{prompt}".encode()).hexdigest()

    def rewrite(self, phrases: list[str]) -> list[str]:
        """The rewritten phrases (possibly empty if the model produced no "- " line)."""
        if not phrases:
            return []
        prompt = build_prompt(phrases, self.num_examples)
        key = self.key(prompt)
        if key not in self.cache:
            completion = self._generate(prompt)
            self.cache[key] = {"model": self.model_id, "input": phrases, "completion": completion,
                               "output": parse_output(completion)}
            self._unsaved += 1
            if self._unsaved >= self.save_every:  # rewriting the whole file per miss would be quadratic
                self.flush()
        return list(self.cache[key]["output"])

    def _generate(self, prompt: str) -> str:
        import torch

        model, tokenizer = self._load()
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        self.generations += 1
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True).eval()
        return self._model, self._tokenizer

    def __enter__(self) -> "KeyPhraseRewriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the cache file (atomically) if anything new is in it."""
        if not self._unsaved:
            return
        self._unsaved = 0
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(self.cache_path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1, sort_keys=True))
        os.replace(tmp, self.cache_path)  # atomic: an interrupted run never leaves a broken cache
