"""`s2d push` (folder checks, model card) and `s2d generate`."""

import json

import pytest

from s2d_align.cli import main
from s2d_align.hub import check_folder, push


def test_dry_run_renders_a_complete_model_card(saved):
    (saved / "eval.json").write_text(json.dumps({"table": {"ce_micro_f1": 0.9123, "BLEU_4": 0.2468},
                                                 "note": "CE: llmrg4 convention, rules labeler."}))
    (saved / "training_info.json").write_text(json.dumps({"curriculum": "s1,s3,s2", "total_parameters": 1234567}))
    files = push(str(saved), "someone/tiny-s2d", dry_run=True)
    card = (saved / "README.md").read_text()
    assert "README.md" in files and "model.safetensors" in files and "modeling_s2d.py" in files
    assert "$" not in card.split("```bibtex")[0]  # every template field was filled
    assert "0.912" in card and "0.247" in card and "llmrg4" in card
    assert "s1,s3,s2" in card and "1,234,567" in card
    assert 'from_pretrained("someone/tiny-s2d", trust_remote_code=True)' in card
    assert card.startswith("---\n") and "pipeline_tag: image-text-to-text\n" in card.split("\n---\n")[0]


def test_push_uploads_the_folder(saved, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message, allow_patterns=None):
            calls.append(("upload", folder_path, repo_id, sorted(allow_patterns)))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    files = push(str(saved), "someone/tiny-s2d", private=True)
    assert calls == [("create", "someone/tiny-s2d", True), ("upload", str(saved), "someone/tiny-s2d", sorted(files))]


def test_push_refuses_bad_folders(tmp_path, saved, capsys):
    with pytest.raises(ValueError, match="has no config.json"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama', not 's2d_align'"):
        check_folder(tmp_path)
    (saved / "optimizer.pt").write_bytes(b"pickle")  # never published, whatever else the folder holds
    try:
        assert main(["push", "--model", str(saved), "--repo-id", "a/b", "--dry-run"]) == 0
        assert "optimizer.pt" not in capsys.readouterr().out
    finally:
        (saved / "optimizer.pt").unlink()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    for name in ("config.json", "configuration_s2d.py", "modeling_s2d.py", "processing_s2d.py",
                 "processor_config.json"):
        (weightless / name).write_bytes((saved / name).read_bytes())
    (weightless / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="holds no .safetensors weights"):
        check_folder(weightless)
    with pytest.raises(ValueError, match="must look like 'user-or-org/name'"):
        push(str(saved), "no-namespace", dry_run=True)


def test_generate_cli_writes_one_row_per_study(saved, tiny, radiographs, tmp_path):
    from s2d_align.generation import generate_reports

    out = tmp_path / "preds.jsonl"
    three = [radiographs[1], radiographs[0], radiographs[1]]  # more views than max_views=2: cut, never refused
    assert main(["generate", "--model", str(saved), "--images", radiographs[0], ",".join(radiographs),
                 ",".join(three), "--out", str(out), "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["images"] for r in rows] == [radiographs[:1], radiographs, three]
    model, processor = tiny
    direct = generate_reports(model, processor, [radiographs[:1], radiographs, three[:2]], max_new_tokens=8,
                              progress=False)  # no view positions: the first two as given
    assert [r["report"] for r in rows] == direct


def test_generate_cli_names_a_missing_image(saved, tmp_path, capsys):
    assert main(["generate", "--model", str(saved), "--images", str(tmp_path / "nope.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_generate_defaults_to_the_longest_training_target(tiny, radiographs, monkeypatch):
    from s2d_align.generation import generate_reports

    model, processor = tiny
    seen = []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["max_new_tokens"])
        return original(self, *args, **{**kwargs, "max_new_tokens": 2})

    monkeypatch.setattr(type(model), "generate", spy)
    generate_reports(model, processor, [radiographs[:1]], progress=False)
    assert seen == [processor.max_report_tokens + 1]  # the report tokens + EOS


def test_generate_cli_on_a_prepared_dataset(saved, tiny, radiographs, tmp_path):
    from datasets import Dataset, DatasetDict

    from s2d_align.generation import generate_reports

    rows = [dict(id="s1", image_paths=[radiographs[1], radiographs[0], radiographs[1]],
                 view_positions=["LATERAL", "PA", "LL"], report="Lungs are clear."),
            dict(id="s2", image_paths=[radiographs[0]], view_positions=["AP"], report="Small effusion.")]
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "data"))
    preds, refs = tmp_path / "preds.jsonl", tmp_path / "refs.jsonl"
    assert main(["generate", "--model", str(saved), "--dataset", str(tmp_path / "data"), "--references-out",
                 str(refs), "--out", str(preds), "--max-new-tokens", "6"]) == 0
    out = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["id"] for r in out] == ["s1", "s2"]
    assert [json.loads(line) for line in refs.read_text().splitlines()] == [
        {"id": "s1", "report": "Lungs are clear."}, {"id": "s2", "report": "Small effusion."}]
    model, processor = tiny  # 3 views for a 2-view model: the PA, then the lateral (by hand)
    direct = generate_reports(model, processor, [[radiographs[0], radiographs[1]], [radiographs[0]]],
                              max_new_tokens=6, progress=False)
    assert [r["report"] for r in out] == direct
    assert main(["generate", "--model", str(saved), "--dataset", str(tmp_path / "data"), "--split", "train"]) == 2


def test_section_reaches_the_model_card_and_generation(saved, radiographs, tmp_path, capsys):
    """A model trained on impressions says so in its card and its predictions, and refuses a findings dataset."""
    import shutil

    from datasets import Dataset, DatasetDict

    folder = tmp_path / "impression-model"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["section"] == "findings"  # the default of a built model
    (folder / "config.json").write_text(json.dumps({**config, "section": "impression"}))
    push(str(folder), "someone/tiny-impression", dry_run=True)
    push(str(saved), "someone/tiny-s2d", dry_run=True)
    assert "the **Impression** section" in (folder / "README.md").read_text()
    assert "the **Findings** section" in (saved / "README.md").read_text()
    preds = tmp_path / "preds.jsonl"
    assert main(["generate", "--model", str(folder), "--images", radiographs[0], "--out", str(preds),
                 "--max-new-tokens", "2"]) == 0
    assert json.loads(preds.read_text().splitlines()[0])["section"] == "impression"
    data = tmp_path / "data"
    DatasetDict({"test": Dataset.from_list([dict(id="s1", image_paths=[radiographs[0]], report="Clear.")])}
                ).save_to_disk(str(data))  # no prepare_summary.json: a findings dataset
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--dataset", str(data), "--max-new-tokens", "2"]) == 2
    assert "writes the impression section but dataset" in capsys.readouterr().err


def test_anatomical_bias_reaches_the_model_card_and_generate_needs_masks(saved, tmp_path, capsys):
    """A model with `anatomical_bias: masks` says so in its card; `s2d generate` refuses images without masks and
    generates from a dataset whose rows carry `anatomy_mask_paths`."""
    import shutil

    import numpy as np
    from datasets import Dataset, DatasetDict
    from PIL import Image

    folder = tmp_path / "biased-model"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "anatomical_bias": "masks"}))
    push(str(folder), "someone/tiny-biased", dry_run=True)
    assert "anatomy_masks=" in (folder / "README.md").read_text()
    assert "| anatomical attention bias | none |" in (push(str(saved), "someone/tiny-s2d", dry_run=True)
                                                       and (saved / "README.md").read_text())
    image, mask = tmp_path / "x.png", tmp_path / "x_mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)).save(image)
    Image.fromarray(np.pad(np.full((40, 60), 255, np.uint8), ((20, 20), (10, 10)))).save(mask)
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--images", str(image), "--max-new-tokens", "2"]) != 0
    assert "anatomy_mask_paths" in capsys.readouterr().err
    data = tmp_path / "data"
    DatasetDict({"test": Dataset.from_list([dict(id="s1", image_paths=[str(image)], anatomy_mask_paths=[str(mask)],
                                                 report="Clear.")])}).save_to_disk(str(data))
    preds = tmp_path / "preds.jsonl"
    assert main(["generate", "--model", str(folder), "--dataset", str(data), "--max-new-tokens", "2",
                 "--out", str(preds)]) == 0
    assert "report" in json.loads(preds.read_text().splitlines()[0])
