"""Where is a finding's position lost? Linear probes along the demo model's path, stage by stage.

For a demo output folder (`s2d demo --out DIR`), this measures on the phantom set:
  - probes (multinomial logistic regression, fitted on the training split, accuracy on the held-out test split) of
    a finding's side (pneumothorax: left/right, effusion: left/right/bilateral, focal opacity: left/right), of
    the opacity's level and of the device's kind, from
      * the frozen image encoder's patch tokens (flattened: every patch keeps its place),
      * the same tokens mean- and max-pooled (what the stand-in's vision pretraining objective reads),
      * the image adapter's output `Z_v` (flattened N_mem x llm_width), after each stage,
      * the LLM's last hidden state at the position that predicts the first report token, image-only prompt;
  - the attribute accuracy (`s2d_align.metrics.phantom_attributes`) of each stage's image-only reports;
  - whether the LLM stand-in writes the side it is told: the base model, key phrases as text in the user turn;
  - teacher-forced side-word accuracy after each stage (training and test studies, image alone; at stage 3 also
    image + key phrases through the adapter): underfitting vs overfitting, and whether the adapter path carries a
    side even when the words state it.
    python -m bench.grounding_probe --demo out/demo --out out/demo/grounding_probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from datasets import load_from_disk

TASKS = {  # task -> (finding, attribute)
    "pneumothorax side": ("pneumothorax", "side"),
    "effusion side": ("effusion", "side"),
    "opacity side": ("opacity", "side"),
    "opacity level": ("opacity", "level"),
    "device kind": ("device", "kind"),  # ET tube / PICC / NG tube: told apart by where the tube runs and ends
}


def targets(split, task: str) -> tuple[list[int], list[str]]:
    """Row indices that have the task's finding, and its attribute value."""
    finding, attribute = TASKS[task]
    rows, values = [], []
    for i, state in enumerate(split["findings"]):
        present = json.loads(state).get(finding)
        if present:
            rows.append(i)
            values.append(present[attribute])
    return rows, values


def linear_probe(train_x: torch.Tensor, train_y: list[str], test_x: torch.Tensor, test_y: list[str],
                 weight_decay: float = 1e-3, steps: int = 300) -> dict:
    """Multinomial logistic regression on standardised features (L-BFGS); accuracy on the test rows."""
    classes = sorted(set(train_y) | set(test_y))
    ytr = torch.tensor([classes.index(v) for v in train_y])
    yte = torch.tensor([classes.index(v) for v in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(xtr.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xtr), ytr) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        accuracy = (head(xte).argmax(1) == yte).float().mean().item()
    majority = max(test_y.count(c) for c in classes) / len(test_y)
    return {"accuracy": round(accuracy, 3), "majority": round(majority, 3), "n_train": len(train_y),
            "n_test": len(test_y)}


@torch.inference_mode()
def representations(model, processor, paths: list[list[str]], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per study: flattened patch tokens, pooled patch tokens, flattened Z_v, first-report-position hidden state."""
    out: dict[str, list[torch.Tensor]] = {"patches": [], "pooled patches": [], "Z_v": [], "LLM first position": []}
    for start in range(0, len(paths), batch_size):
        inputs = processor(images=paths[start: start + batch_size])
        patches = model.model.encode_images(inputs["pixel_values"], inputs["view_mask"])[:, 0]  # (B, P, d_v)
        out["patches"].append(patches.flatten(1))
        out["pooled patches"].append(torch.cat([patches.mean(1), patches.amax(1)], -1))
        hidden = model.model(**inputs)
        out["Z_v"].append(hidden.context_embeddings["image"].flatten(1))
        out["LLM first position"].append(hidden.last_hidden_state[:, -1])  # left-padded: last = first report token
    return {k: torch.cat(v).float() for k, v in out.items()}


def probe_all(train_repr: dict, test_repr: dict, train, test, names) -> dict:
    result = {}
    for task in TASKS:
        tr_rows, tr_y = targets(train, task)
        te_rows, te_y = targets(test, task)
        result[task] = {name: linear_probe(train_repr[name][tr_rows], tr_y, test_repr[name][te_rows], te_y)
                        for name in names}
    return result


@torch.inference_mode()
def told_side(model, processor, test, max_new_tokens: int = 96) -> dict:
    """The base model's LLM alone, the study's ground-truth key phrases as text in the user turn (as in its
    pretraining): does it write the side and level it is told?"""
    from s2d_align.metrics.phantom_attributes import attribute_accuracy
    from s2d_align.training.standins import text_prompt_ids

    reports = []
    for start in range(0, len(test), 32):
        rows = test.select(range(start, min(start + 32, len(test))))
        prompts = [text_prompt_ids(processor, "; ".join(p)) for p in rows["key_phrases"]]
        batch = processor.pad_sequences(prompts, left=True)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        reports += processor.batch_decode(out, prompt_length=batch["input_ids"].shape[1])
    return attribute_accuracy(dict(zip(test["id"], reports)), dict(zip(test["id"], test["findings"])))


SIDE_WORDS = ("left", "right", "bilateral")


@torch.inference_mode()
def side_word_accuracy(model, processor, split, key_phrases: bool = False, batch_size: int = 32) -> dict:
    """Teacher-forced: at every reference-report position whose next word is left / right / bilateral, is the true
    one the most probable of the three? Image-only prompt, or image + the study's key phrases through the key-phrase
    adapter (stage 3's context), which states every side in words. Free of generation's sentence-planning noise,
    and the two conditions separate "the image does not give the side" from "the adapter path does not carry it"."""
    encoded = {w: processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in SIDE_WORDS}
    words = [w for w in SIDE_WORDS if len(encoded[w]) == 1]  # a word split into pieces has no one position to score
    ids = torch.tensor([encoded[w][0] for w in words])
    correct = total = 0
    for start in range(0, len(split), batch_size):
        rows = split[start: start + batch_size]
        extra = {"key_phrases": rows["key_phrases"]} if key_phrases else {}
        batch = processor(images=rows["image_paths"], suffix=rows["report"], **extra)
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch).logits[:, :-1]
        at = torch.isin(labels, ids)
        predicted = logits[at][:, ids].argmax(-1)
        truth = (labels[at].unsqueeze(-1) == ids).int().argmax(-1)
        correct += int((predicted == truth).sum())
        total += int(at.sum())
    return {"correct": correct, "total": total, "accuracy": round(correct / max(total, 1), 3), "words": words}


@torch.inference_mode()
def device_kind_forced(model, processor, split, batch_size: int = 32) -> dict:
    """Teacher-forced device kind: each study's reference report with its device sentence put in the same wording
    of every kind; the kind whose report the model finds most probable (image-only prompt, summed log-probability)
    is its answer. Free of generation (sentence order, omissions, a shared first word: "A nasogastric" / "A
    right-sided PICC" against "An endotracheal"), so it tells "the image does not give the kind" from "free
    generation loses it"."""
    from s2d_align.data.phantom.report import DEVICE_SENTENCES

    kinds = list(DEVICE_SENTENCES)
    candidates, truths, paths = [], [], []
    for row in split:
        device = json.loads(row["findings"]).get("device")
        wording = [i for i in (0, 1) if device and DEVICE_SENTENCES[device["kind"]][i] in row["report"]]
        if not wording:
            continue
        said = DEVICE_SENTENCES[device["kind"]][wording[0]]
        candidates += [row["report"].replace(said, DEVICE_SENTENCES[k][wording[0]]) for k in kinds]
        truths.append(device["kind"])
        paths += [row["image_paths"]] * len(kinds)
    scores = []
    for start in range(0, len(candidates), batch_size):
        batch = processor(images=paths[start: start + batch_size], suffix=candidates[start: start + batch_size])
        labels = batch.pop("labels")[:, 1:]
        logp = model(**batch).logits[:, :-1].float().log_softmax(-1)
        mask = labels != -100
        token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores += (token * mask).sum(-1).tolist()
    chosen = [kinds[max(range(len(kinds)), key=lambda k: scores[i * len(kinds) + k])] for i in range(len(truths))]
    confusion: dict = {}
    for truth, said in zip(truths, chosen):
        confusion.setdefault(truth, {}).setdefault(said, 0)
        confusion[truth][said] += 1
    correct = sum(t == c for t, c in zip(truths, chosen))
    return {"correct": correct, "total": len(truths), "accuracy": round(correct / max(len(truths), 1), 3),
            "confusion": confusion}


def main(argv=None) -> dict:
    from s2d_align.generation import generate_reports, load_model
    from s2d_align.metrics.phantom_attributes import HEADLINE_ROWS, attribute_accuracy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, help="an `s2d demo --out` folder")
    parser.add_argument("--out", help="JSON output (default: DEMO/grounding_probe.json)")
    parser.add_argument("--max-train", type=int, default=2000, help="training studies used to fit the probes")
    parser.add_argument("--stages", default="base,s1,s2,s3")
    parser.add_argument("--no-reports", action="store_true", help="probes only: skip generating and scoring reports")
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    data = load_from_disk(str(demo / "data"))
    train = data["train"].select(range(min(args.max_train, len(data["train"]))))
    test = data["test"]
    folders = {"base": demo / "base", **{s: demo / "curriculum" / s for s in ("s1", "s2", "s3")}}
    result = {"demo": str(demo), "probes": {}, "attributes": {}, "side words (teacher-forced)": {}}
    for stage in args.stages.split(","):
        model, processor = load_model(str(folders[stage]), device="cpu")
        tr = representations(model, processor, list(train["image_paths"]))
        te = representations(model, processor, list(test["image_paths"]))
        names = ["patches", "pooled patches", "Z_v", "LLM first position"] if stage == "base" else \
            ["Z_v", "LLM first position"]
        result["probes"][stage] = probe_all(tr, te, train, test, names)
        print(stage, json.dumps(result["probes"][stage]), flush=True)
        if stage != "base":
            result["side words (teacher-forced)"][stage] = {
                "train, image": side_word_accuracy(model, processor, train.select(range(min(600, len(train))))),
                "test, image": side_word_accuracy(model, processor, test),
                **({"test, image + key phrases": side_word_accuracy(model, processor, test, key_phrases=True)}
                   if stage == "s3" else {})}
            print(stage, json.dumps(result["side words (teacher-forced)"][stage]), flush=True)
            result.setdefault("device kind (teacher-forced)", {})[stage] = {
                "train, image": device_kind_forced(model, processor, train.select(range(min(600, len(train))))),
                "test, image": device_kind_forced(model, processor, test)}
            print(stage, json.dumps(result["device kind (teacher-forced)"][stage]), flush=True)
        if args.no_reports:
            continue
        if stage == "base":
            result["attributes"]["LLM stand-in, told the key phrases as text"] = told_side(model, processor, test)
        else:
            reports = generate_reports(model, processor, list(test["image_paths"]), batch_size=32, max_new_tokens=96,
                                       progress=False)
            result["attributes"][f"{stage}, image only"] = attribute_accuracy(
                dict(zip(test["id"], reports)), dict(zip(test["id"], test["findings"])))
    out = Path(args.out or demo / "grounding_probe.json")
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result, HEADLINE_ROWS))
    return result


def markdown(result: dict, rows) -> str:
    lines = ["| probe (test accuracy / majority) | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for stage, probes in result["probes"].items():
        for name in next(iter(probes.values())):
            cells = [f"{probes[t][name]['accuracy']:.2f} / {probes[t][name]['majority']:.2f}" for t in TASKS]
            lines.append(f"| {stage}: {name} | " + " | ".join(cells) + " |")
    words = result.get("side words (teacher-forced)") or {}
    if words:
        lines += ["", "| side word, teacher-forced | " + " | ".join(next(iter(words.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(words.values())))]
        lines += [f"| {stage} | " + " | ".join(f"{v['correct']}/{v['total']} ({v['accuracy']:.2f})"
                                               for v in cells.values()) + " |" for stage, cells in words.items()]
    kinds = result.get("device kind (teacher-forced)") or {}
    if kinds:
        lines += ["", "| device kind, teacher-forced | train, image | test, image |", "|---|---|---|"]
        lines += [f"| {stage} | " + " | ".join(f"{v['correct']}/{v['total']} ({v['accuracy']:.2f})"
                                               for v in cells.values()) + " |" for stage, cells in kinds.items()]
    lines += ["", "| reports | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for system, acc in result["attributes"].items():
        lines.append(f"| {system} | " + " | ".join(f"{acc[r]['correct']}/{acc[r]['total']}" for r in rows) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
