"""The main job end to end, at a toy size: phantom -> stand-ins -> s1, s2, s3 -> generate -> eval -> final/."""

import json

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from s2d_align.hub import check_folder
from s2d_align.training.demo import DemoConfig, make_image_blind, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(num_patients=24, vision_epochs=1, llm_epochs=0.05, llm_extra_reports=100, vocab_size=400,
                        stage_epochs={"s1": 1.0, "s2": 1.0, "s3": 1.0}, max_new_tokens=12, baseline=False)
    return out, run_demo(str(out), config)


def test_demo_writes_a_hub_ready_final_folder(demo):
    out, _ = demo
    files = {p.name for p in check_folder(out / "final")}
    assert {"README.md", "eval.json", "training_info.json", "model.safetensors", "modeling_s2d.py"} <= files
    card = (out / "final" / "README.md").read_text()
    assert "Demo model" in card and "llmrg4" in json.dumps(json.loads((out / "final" / "eval.json").read_text()))
    assert (out / "training_curves.png").stat().st_size > 0


def test_demo_predictions_cover_the_test_split_and_come_from_the_final_model(demo):
    from s2d_align.generation import generate_reports, load_model

    out, _ = demo
    test = load_from_disk(str(out / "data"))["test"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(test["id"])
    model, processor = load_model(str(out / "final"), device="cpu")
    again = generate_reports(model, processor, list(test["image_paths"][:3]), max_new_tokens=12, progress=False)
    assert again == [r["report"] for r in rows[:3]]


def test_demo_eval_names_its_conventions_and_scores_in_range(demo):
    out, summary = demo
    saved = json.loads((out / "eval.json").read_text())
    assert saved["ce_convention"] == "llmrg4" and saved["labeler"] == "rules"
    assert 0.0 <= saved["table"]["ce_micro_f1"] <= 1.0
    assert saved["table"] == summary["table"]
    assert saved["image_blind_baseline"] is None  # switched off in this toy run


def test_image_blind_copy_replaces_every_image_by_one_constant(tmp_path, demo):
    out, _ = demo
    blind = make_image_blind(out / "data", tmp_path / "blind", 64)
    original, copy = load_from_disk(str(out / "data")), load_from_disk(str(blind))
    for split in original:
        assert copy[split]["id"] == original[split]["id"] and copy[split]["report"] == original[split]["report"]
        paths = {p for views in copy[split]["image_paths"] for p in views}
        assert len(paths) == 1
    image = np.asarray(Image.open(paths.pop()))
    assert image.min() == image.max()


def test_demo_eval_says_where_the_findings_are(demo):
    """eval.json scores every present finding's attributes and runs the mirror test on every sided finding."""
    out, _ = demo
    saved = json.loads((out / "eval.json").read_text())
    states = [json.loads(f) for f in load_from_disk(str(out / "data"))["test"]["findings"]]
    expected = {"pneumothorax side": sum(bool(s["pneumothorax"]) for s in states),
                "effusion side": sum(bool(s["effusion"]) for s in states),
                "device kind": sum(bool(s["device"]) for s in states)}
    for row, count in expected.items():
        assert saved["attributes"]["model"][row]["total"] == count, row
    sided = sum(bool(s[name]) for s in states for name in ("pneumothorax", "effusion", "opacity"))
    assert saved["mirror"]["total"] == sided
    assert "Mirror test" in (out / "eval.md").read_text() or sided == 0


# -- the committed stand-ins ----------------------------------------------------------------------------------------
def test_a_demo_that_pretrains_its_stand_ins_writes_a_bundle_that_loads_with_its_recipe(demo):
    from modeling_s2d import S2DAlignForConditionalGeneration
    from s2d_align.training.standins import STANDIN_PREFIXES, load_bundled_standins

    out, _ = demo
    recipe = json.loads((out / "standins_bundle" / "recipe.json").read_text())
    state, logs, why = load_bundled_standins(recipe, out / "standins_bundle")
    assert why == "" and set(logs) == {"vision stand-in", "LLM stand-in"}
    base = S2DAlignForConditionalGeneration.from_pretrained(out / "base").state_dict()
    stand_in_keys = {k for k in base if k.startswith(STANDIN_PREFIXES)}
    assert set(state) == stand_in_keys and all(state[k].equal(base[k]) for k in stand_in_keys)

    changed = {**recipe, "fields": {**recipe["fields"], "llm_layers": 7}}
    assert load_bundled_standins(changed, out / "standins_bundle")[2].endswith("(llm_layers)")
    other_data = {**recipe, "train_split_sha256": "0" * 64}
    assert "another train split" in load_bundled_standins(other_data, out / "standins_bundle")[2]


def test_the_committed_stand_ins_fit_the_demo_defaults():
    """The bundle in s2d_align/resources/demo_standins was made with today's DemoConfig: a changed default that
    shapes the stand-ins must come with a refreshed bundle (copy `out/demo/standins_bundle` after a run with
    `standins="pretrain"`), or every `make demo` would silently pretrain again."""
    from s2d_align.tiny import build_tiny
    from s2d_align.training.demo import STANDIN_FIELDS
    from s2d_align.training.standins import bundled_standins_dir, load_bundled_standins

    folder = bundled_standins_dir()
    recipe = json.loads((folder / "recipe.json").read_text())
    defaults = DemoConfig()
    assert recipe["fields"] == {k: getattr(defaults, k) for k in sorted(STANDIN_FIELDS)}
    state, _, why = load_bundled_standins(recipe, folder)
    model, _ = build_tiny(["a left pleural effusion"] * 4, vocab_size=300, image_size=defaults.image_size,
                          patch_size=defaults.patch_size, vision_width=defaults.vision_width,
                          vision_layers=defaults.vision_layers, llm_width=defaults.llm_width,
                          llm_layers=defaults.llm_layers, text_encoder="tiny", max_views=1)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    vocabulary_free = {k: v for k, v in state.items() if "embed_tokens" not in k and not k.startswith("lm_head")}
    assert why == "" and vocabulary_free and all(shapes[k] == tuple(v.shape) for k, v in vocabulary_free.items())
    # the vocabulary rows are the report tokenizer's (its BPE merges plus the special and placeholder tokens)
    assert state["lm_head.weight"].shape[1] == defaults.llm_width >= 1
    assert recipe["fields"]["vocab_size"] <= state["lm_head.weight"].shape[0] <= recipe["fields"]["vocab_size"] + 8


def test_the_committed_stand_ins_were_made_from_todays_phantom_training_split(tmp_path):
    """`make demo` uses the bundle only when the phantom generator still writes the same training split and the
    report tokenizer comes out the same: a change to either must come with a refreshed bundle, or every `make demo`
    pretrains again (11.6 more minutes)."""
    from s2d_align.data.phantom import generate_phantom
    from s2d_align.tiny import iu_xray_reports, train_report_tokenizer
    from s2d_align.training.demo import STANDIN_FIELDS
    from s2d_align.training.standins import bundled_standins_dir, standin_recipe

    config = DemoConfig()
    dataset = generate_phantom(tmp_path / "data", config.num_patients, seed=config.seed,
                               image_size=config.render_size)
    tokenizer = train_report_tokenizer(list(dataset["train"]["report"]) + iu_xray_reports(), config.vocab_size)
    recipe = standin_recipe({k: getattr(config, k) for k in STANDIN_FIELDS}, tmp_path / "data", tokenizer)
    committed = json.loads((bundled_standins_dir() / "recipe.json").read_text())
    assert recipe["train_split_sha256"] == committed["train_split_sha256"]
    assert recipe["tokenizer_vocab_sha256"] == committed["tokenizer_vocab_sha256"]
