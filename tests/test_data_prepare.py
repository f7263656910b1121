"""`s2d prepare` end to end: phantom via the CLI, IU X-Ray with retrieval on a tiny Dinov2, MIMIC raw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from s2d_align.cli import main
from s2d_align.data.iu_xray import BUNDLED_ANNOTATION
from s2d_align.data.prepare import prepare
from s2d_align.data.schema import BASE_FEATURES, SPLITS
from s2d_align.keyphrases import extract_key_phrases

RAW_MIMIC = Path(__file__).resolve().parent / "fixtures" / "data_mimic_raw"


def test_cli_phantom(tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["prepare", "--dataset", "phantom", "--num-patients", "8", "--image-size", "48", "--seed", "2",
                 "--out", str(out)]) == 0
    assert "prepared phantom" in capsys.readouterr().out
    dsd = load_from_disk(str(out))
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["counts"] == {s: len(dsd[s]) for s in SPLITS}
    assert summary["options"]["keyphrases"] == "ground_truth" and summary["options"]["image_size"] == 48
    assert set(BASE_FEATURES) <= set(dsd["train"].column_names)


def test_phantom_with_rule_key_phrases_and_no_references(tmp_path):
    dsd = prepare("phantom", tmp_path, num_patients=4, image_size=32, keyphrases="rules", reference="none")
    row = dsd["train"][0]
    assert row["key_phrases"] == extract_key_phrases(row["report"])
    assert set(dsd["train"]["reference_id"]) == {""}


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_iu_retrieval_with_a_feature_model(tmp_path, tiny_dinov2):
    data = json.loads(BUNDLED_ANNOTATION.read_text())
    sub = {"train": data["train"][:6], "val": data["val"][:2], "test": data["test"][:2]}
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps(sub))
    rng = np.random.default_rng(0)
    for e in (e for split in sub.values() for e in split):
        for rel in e["image_path"]:
            path = tmp_path / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "iu_xray", "--annotation", str(ann), "--image-root", str(tmp_path / "images"),
                 "--reference", "retrieval", "--feature-model", str(tiny_dinov2), "--clean", "--out", str(out)]) == 0
    dsd = load_from_disk(str(out))
    train = {r["id"]: r for r in dsd["train"]}
    for split in SPLITS:
        for row in dsd[split]:
            assert row["reference_id"] in train and row["reference_id"] != row["id"]
            assert row["reference"] == train[row["reference_id"]]["report"]
            assert row["key_phrases"] == extract_key_phrases(row["report_raw"])  # from the uncleaned text
            assert row["report"] == row["report"].lower()
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["options"]["reference"] == "retrieval" and summary["options"]["clean"] is True
    assert summary["options"]["feature_model"] == str(tiny_dinov2)
    assert summary["references"]["by_split"]["validation"] == {"same_patient": 0, "retrieval": 2, "none": 0}


def test_mimic_raw_prepare_summary(tmp_path, capsys):
    root = tmp_path / "mimic"
    shutil.copytree(RAW_MIMIC, root)
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "mimic_cxr", "--mimic-root", str(root), "--missing-images", "skip",
                 "--out", str(out)]) == 0
    console = capsys.readouterr().out
    dsd = load_from_disk(str(out))
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["counts"] == {"train": 6, "validation": 1, "test": 2}
    assert summary["skipped"]["by_reason"] == {"empty findings": 2, "missing image": 1}
    # same_patient: the samples without a reference are counted in the summary and said on the console
    assert summary["references"]["no_reference"] == 2
    assert "warning: 2 of 9 samples have no stage-2 reference (same_patient" in console
    assert summary["options"]["keyphrases"] == "rules" and summary["options"]["reference"] == "same_patient"
    row = dsd["train"][dsd["train"]["id"].index("53911762")]
    assert row["key_phrases"] == ["mild cardiomegaly", "no focal consolidation"]
    assert row["reference_id"] == "53189527"
    # the view rule, with s2d build's default max_views=2: 4 -> 2, 3 -> 2, 4 -> 2 views
    views = summary["views"]
    assert views["max_views"] == 2 and views["rule"].startswith("frontal first (PA, then AP")
    assert (views["studies_cut"], views["views_dropped"]) == (3, 5)
    assert "views: 5 images dropped from 3 studies" in console
    assert max(len(p) for split in dsd.values() for p in split["image_paths"]) == 2
    # without a model folder, report lengths are counted in words against the default 256
    targets = summary["targets"]
    assert targets["counted_in"].startswith("words") and targets["max_report_tokens"] == 256
    assert targets["truncated"] == 0 and targets["by_split"]["train"]["longest_words"] == max(
        len(r.split()) for r in dsd["train"]["report"])


def test_prepare_counts_long_reports_with_the_model_tokenizer(tmp_path, capsys):
    from s2d_align.tiny import build_tiny

    model, processor = build_tiny(vocab_size=300, image_size=32, patch_size=8, vision_width=32, llm_width=32,
                                  num_memory_queries=2, max_views=3)
    processor.max_report_tokens = 50
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    root = tmp_path / "mimic"
    shutil.copytree(RAW_MIMIC, root)
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "mimic_cxr", "--mimic-root", str(root), "--missing-images", "skip",
                 "--reference", "none", "--model", str(tmp_path / "model"), "--out", str(out)]) == 0
    console = capsys.readouterr().out
    summary = json.loads((out / "prepare_summary.json").read_text())
    dsd = load_from_disk(str(out))
    # the model's max_views (3) and its tokenizer's lengths
    views = summary["views"]
    assert views["max_views"] == 3 and (views["studies_cut"], views["views_dropped"]) == (2, 2)
    lengths = {split: [len(processor.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in ds["report"]]
               for split, ds in dsd.items()}
    expected = sum(n > 50 for split in lengths.values() for n in split)
    assert 0 < expected < summary["total"]
    assert summary["targets"]["truncated"] == expected and summary["targets"]["max_report_tokens"] == 50
    assert summary["targets"]["by_split"]["train"]["longest_tokens"] == max(lengths["train"])
    assert f"targets: {expected} reports longer than max_report_tokens=50" in console
    # an explicit --max-views wins over the model's
    assert main(["prepare", "--dataset", "mimic_cxr", "--mimic-root", str(root), "--missing-images", "skip",
                 "--reference", "none", "--model", str(tmp_path / "model"), "--max-views", "4",
                 "--out", str(tmp_path / "out4")]) == 0
    assert json.loads((tmp_path / "out4" / "prepare_summary.json").read_text())["views"]["views_dropped"] == 0


def test_unknown_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'chexpert'"):
        prepare("chexpert", tmp_path)
    with pytest.raises(ValueError, match="unknown prepare option 'colour'"):
        prepare("phantom", tmp_path, colour="red")


def test_prepare_with_llm_rewrite_records_and_caches(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from s2d_align.tiny import train_report_tokenizer

    model_dir = tmp_path / "llm"
    tokenizer = train_report_tokenizer(["- mild cardiomegaly", "Input: Output:"] * 10, vocab_size=280)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096)
                     ).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    root = tmp_path / "mimic"
    shutil.copytree(RAW_MIMIC, root)
    out = tmp_path / "out"
    dsd = prepare("mimic_cxr", out, mimic_root=root, missing_images="skip", rewrite_model=model_dir)
    summary = json.loads((out / "prepare_summary.json").read_text())
    rewrite = summary["keyphrase_rewrite"]
    assert rewrite["model"] == str(model_dir) and Path(rewrite["cache"]).is_file()
    cached = json.loads(Path(rewrite["cache"]).read_text())
    # one generation per distinct phrase list; a random model's empty answers keep the extracted phrases
    distinct = {tuple(extract_key_phrases(r)) for s in dsd for r in dsd[s]["report"]}
    assert rewrite["generated"] == len(cached) == len(distinct)
    for split in SPLITS:
        for row in dsd[split]:
            extracted = extract_key_phrases(row["report"])
            entry = next(v for v in cached.values() if v["input"] == extracted)
            assert row["key_phrases"] == (entry["output"] or extracted)


def test_prepare_impression_section_is_the_target_and_is_recorded(tmp_path, capsys):
    from s2d_align.data.prepare import dataset_section

    root = tmp_path / "mimic"
    shutil.copytree(RAW_MIMIC, root)
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "mimic_cxr", "--mimic-root", str(root), "--missing-images", "skip",
                 "--reference", "none", "--section", "impression", "--out", str(out)]) == 0
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["options"]["section"] == "impression" and summary["options"]["report_text"] == "raw IMPRESSION"
    assert summary["skipped"]["by_reason"] == {"empty impression": 1, "missing image": 1}
    reports = {r["id"]: r["report"] for split in load_from_disk(str(out)).values() for r in split}
    assert reports["57375967"] == "SYNTHETIC 4. No acute cardiopulmonary process."
    # key phrases come from the section that is the target
    row = load_from_disk(str(out))["train"]
    assert row[row["id"].index("50414267")]["key_phrases"] == extract_key_phrases("Small left effusion.")
    assert dataset_section(out) == "impression" and dataset_section(tmp_path) == "findings"
    with pytest.raises(ValueError, match="phantom set writes a FINDINGS section only"):
        prepare("phantom", tmp_path / "ph", section="impression")
    with pytest.raises(ValueError, match="unknown report section 'summary'"):
        prepare("mimic_cxr", tmp_path / "x", mimic_root=root, section="summary")
