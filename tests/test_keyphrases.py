"""Key phrases: the rule extractor on real IU sentences (hand-checked), the RadGraph composition,
and the optional LLM rewrite (prompt, cache, parsing) with a tiny random Llama."""

from __future__ import annotations

import json

import pytest

from s2d_align.data.iu_xray import BUNDLED_ANNOTATION
from s2d_align.keyphrases import extract_key_phrases
from s2d_align.labeler.rules import split_sentences

# Real sentences from the R2Gen IU X-Ray annotation.json; expected phrases written by hand.
IU_SENTENCES = {
    # negation
    "No pneumothorax or pleural effusion.": ["no pneumothorax", "no pleural effusion"],
    "There is no pleural effusion or pneumothorax.": ["no pleural effusion", "no pneumothorax"],
    "No focal consolidation, pneumothorax or large pleural effusion.":
        ["no focal consolidation", "no pneumothorax", "no large pleural effusion"],
    "There is no pulmonary edema.": ["no pulmonary edema"],
    "No typical findings of pulmonary edema.": ["no pulmonary edema"],
    "Lungs are clear without focal consolidation, effusion, or pneumothorax.":
        ["no focal consolidation", "no pleural effusion", "no pneumothorax"],
    "The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.":
        ["no focal airspace disease", "no pneumothorax", "no pleural effusion"],
    "No focal airspace disease.": ["no focal airspace disease"],
    "There is no evidence of pneumothorax.": ["no pneumothorax"],
    "Negative for pneumothorax or pleural effusion.": ["no pneumothorax", "no pleural effusion"],
    "The right internal jugular catheter has been removed.": ["no right internal jugular catheter"],
    # normal heart / mediastinum
    "The heart is normal in size.": ["normal heart size"],
    "Heart size is normal.": ["normal heart size"],
    "Heart is not enlarged.": ["normal heart size"],
    "Normal heart size and mediastinal contours.": ["normal heart size", "normal cardiomediastinal silhouette"],
    # severity
    "The heart is mildly enlarged.": ["mild cardiomegaly"],
    "Mild cardiomegaly.": ["mild cardiomegaly"],
    "There is moderate cardiomegaly.": ["moderate cardiomegaly"],
    "Stable cardiomegaly.": ["cardiomegaly"],
    "A large hiatal hernia is noted.": ["large hiatal hernia"],
    "There are moderate degenerative changes in the thoracic spine.":
        ["moderate degenerative changes in the thoracic spine"],
    "There is severe dextroscoliosis of the thoracic spine with chronic deformity of the bilateral ribs.":
        ["severe dextroscoliosis of the thoracic spine", "chronic deformity of the bilateral ribs"],
    # laterality (+ severity)
    "There is a small left pleural effusion.": ["small left pleural effusion"],
    "There is a small right pleural effusion.": ["small right pleural effusion"],
    "Small right pleural effusion.": ["small right pleural effusion"],
    "There are small bilateral pleural effusions.": ["small bilateral pleural effusions"],
    "Bilateral small pleural effusions.": ["bilateral small pleural effusions"],
    "There is moderate left pleural effusion and small right pleural effusion.":
        ["moderate left pleural effusion", "small right pleural effusion"],
    "There is a moderate sized right pleural effusion.": ["moderate right pleural effusion"],
    "There is a recurrence moderate-sized left pleural effusion.": ["moderate left pleural effusion"],
    "Redemonstration of moderate left pneumothorax which is unchanged from comparison.": ["moderate left pneumothorax"],
    "Left PICC line remains in XXXX.": ["left picc line"],
    # anatomy
    "There is a focal opacity within the right upper lung.": ["focal opacity within the right upper lung"],
    "Right middle lobe opacity is present.": ["right middle lobe opacity"],
    "There is right upper lobe airspace disease.": ["right upper lobe airspace disease"],
    "Decreased left basilar airspace disease.": ["left basilar airspace disease"],
    "There are streaky bibasilar opacities.": ["streaky bibasilar opacities"],
    "There is a calcified granuloma within the left lung base.": ["calcified granuloma within the left lung base"],
    "There is a 9 mm right lower lobe pulmonary nodule, not seen on prior exams.": ["right lower lobe pulmonary nodule"],
    "Tracheostomy tube.": ["tracheostomy tube"],
    # uncertainty
    "Cannot exclude early pulmonary edema.": ["possible pulmonary edema"],
    "The streaky opacities in the lung bases may represent atelectasis.":
        ["streaky opacities in the lung bases", "possible atelectasis"],
    "Streaky opacity is noted within the left lung base which may represent focal area of atelectasis.":
        ["streaky opacity within the left lung base", "possible atelectasis"],
    "Vague patchy opacity in the right midlung which may represent early pneumonia.":
        ["patchy opacity in the right midlung", "possible pneumonia"],
    "There is patchy opacity in the left lung base which may be secondary to atelectasis or possible infiltrate.":
        ["patchy opacity in the left lung base", "possible atelectasis", "possible infiltrate"],
    "There is large right-sided pleural effusion and probable underlying associated compressive atelectasis.":
        ["large right pleural effusion", "possible compressive atelectasis"],
    "Small nodular opacity left upper lobe may represent early infiltrate.":
        ["small nodular opacity in the left upper lobe", "possible infiltrate"],
    "There is mild blunting of the right costophrenic XXXX which may represent a small right pleural effusion.":
        ["mild blunting of the right costophrenic angle", "possible small right pleural effusion"],
    "Possible subtle increased opacity in right apex versus technique.": ["possible opacity in the right apex"],
    "Minimal XXXX atelectasis or scarring in the left lower lobe.":
        ["possible atelectasis", "possible scarring in the left lower lobe"],
}


@pytest.fixture(scope="module")
def iu_sentences() -> set[str]:
    data = json.loads(BUNDLED_ANNOTATION.read_text())
    return {s for split in data.values() for e in split for s in split_sentences(e["report"])}


def test_the_sentences_are_real_iu_text(iu_sentences):
    assert len(IU_SENTENCES) >= 40
    missing = [s for s in IU_SENTENCES if s not in iu_sentences]
    assert not missing


@pytest.mark.parametrize("sentence", list(IU_SENTENCES))
def test_rule_phrases_on_real_iu_sentences(sentence):
    assert extract_key_phrases(sentence) == IU_SENTENCES[sentence]


def test_a_whole_report_in_order_without_duplicates():
    report = ("The heart is normal in size. The mediastinum is unremarkable. There is a small left pleural "
              "effusion. No pneumothorax. No pleural effusion on the right. No pneumothorax is seen. "
              "The lungs are otherwise clear.")
    assert extract_key_phrases(report) == ["normal heart size", "normal cardiomediastinal silhouette",
                                           "small left pleural effusion", "no pneumothorax",
                                           "no right pleural effusion"]
    assert extract_key_phrases("") == [] and extract_key_phrases("The lungs are clear.") == []


def test_rule_phrases_recover_every_phantom_finding(tmp_path):
    """On the phantom reports (ground truth known by construction) each positive finding comes back
    with its side and severity."""
    from s2d_align.data.phantom import generate_phantom

    dsd = generate_phantom(tmp_path, 30, seed=9, image_size=32)
    checked = 0
    for split in dsd:
        for row in dsd[split]:
            phrases = extract_key_phrases(row["report"])
            for name, f in json.loads(row["findings"]).items():
                if f is None:
                    continue
                checked += 1
                if name == "cardiomegaly":
                    assert f"{f['severity']} cardiomegaly" in phrases
                elif name == "effusion":
                    noun = "pleural effusions" if f["side"] == "bilateral" else "pleural effusion"
                    assert f"{f['size']} {f['side']} {noun}" in phrases
                elif name == "pneumothorax":
                    assert any(p.startswith(f"{f['size']} {f['side']} ") and p.endswith("pneumothorax") for p in phrases)
                elif name == "edema":
                    assert any(p.startswith(f["severity"]) and p.endswith("pulmonary edema") for p in phrases)
                elif name == "opacity":
                    zone = {"upper": "upper lung", "mid": "midlung", "lower": "lung base"}[f["level"]]
                    assert any("opacity" in p and p.endswith(f"{f['side']} {zone}") for p in phrases)
                else:
                    assert any(f["kind"] in p for p in phrases)
    assert checked > 20


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown key-phrase backend 'spacy'"):
        extract_key_phrases("No effusion.", backend="spacy")


# --- RadGraph ----------------------------------------------------------------------------------------

def test_radgraph_composition_from_an_annotation():
    from s2d_align.keyphrases.radgraph_backend import phrases_from_annotation

    # "Small right pleural effusion with adjacent atelectasis of the right lower lobe. No pneumothorax."
    ent = lambda tokens, label, ix, rel=(): {"tokens": tokens, "label": label, "start_ix": ix, "end_ix": ix,  # noqa: E731
                                             "relations": [list(r) for r in rel]}
    annotation = {"text": "...", "entities": {
        "1": ent("Small", "Observation::definitely present", 0, [("modify", "4")]),
        "2": ent("right", "Anatomy::definitely present", 1, [("modify", "3")]),
        "3": ent("pleural", "Anatomy::definitely present", 2),
        "4": ent("effusion", "Observation::definitely present", 3, [("located_at", "3")]),
        "5": ent("atelectasis", "Observation::definitely present", 6, [("located_at", "9")]),
        "7": ent("right", "Anatomy::definitely present", 9, [("modify", "8")]),
        "8": ent("lower", "Anatomy::definitely present", 10, [("modify", "9")]),
        "9": ent("lobe", "Anatomy::definitely present", 11),
        "10": ent("pneumothorax", "Observation::definitely absent", 13),
    }}
    assert phrases_from_annotation(annotation) == ["Small effusion in the right pleural",
                                                   "atelectasis in the right lower lobe"]
    # the README example of the radgraph package: only the present observation, at its anatomy
    readme = {"entities": {"1": ent("pneumothorax", "Observation::definitely absent", 3),
                           "2": ent("chest", "Anatomy::definitely present", 5),
                           "3": ent("tube", "Observation::definitely present", 6, [("located_at", "2")])}}
    assert phrases_from_annotation(readme) == ["tube in the chest"]


def test_radgraph_backend_without_the_package_is_a_clear_error():
    pytest.importorskip("s2d_align.keyphrases.radgraph_backend")
    try:
        import radgraph  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"needs the radgraph package: pip install 's2d-align\[radgraph\]'"):
            extract_key_phrases("No pneumothorax.", backend="radgraph")
    else:  # installed: without cached weights it must refuse to download
        with pytest.raises(ValueError, match="never downloads"):
            extract_key_phrases("No pneumothorax.", backend="radgraph")


# --- LLM rewrite ---------------------------------------------------------------------------------------

def test_prompt_is_the_few_shot_prompt():
    from s2d_align.keyphrases.llm_rewrite import EXAMPLE_POOL, INSTRUCTION, build_prompt

    prompt = build_prompt(["effusion pleural small right", "pneumothorax"], num_examples=3)
    assert prompt.startswith(INSTRUCTION + "\n")
    assert prompt.count("Input:") == 4 and prompt.count("Output:") == 4  # 3 demonstrations + the query
    assert prompt.endswith("Input:\n- effusion pleural small right\n- pneumothorax\nOutput:\n")
    demos = [ex for ex in EXAMPLE_POOL if all(f"- {p}\n" in prompt for p in ex[0] + ex[1])]
    assert len(demos) == 3  # three distinct pool examples, inputs with their gold outputs
    assert build_prompt(["pneumothorax"]) == build_prompt(["pneumothorax"])  # seeded by the input


def test_parse_output():
    from s2d_align.keyphrases.llm_rewrite import parse_output

    assert parse_output("- small left pleural effusion\n-  mild cardiomegaly \n\nInput:\n- x") == [
        "small left pleural effusion", "mild cardiomegaly"]
    assert parse_output("\n- a\n- a\nInput: - b") == ["a"]
    assert parse_output("nonsense text") == []


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from s2d_align.tiny import train_report_tokenizer

    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = train_report_tokenizer(["small left pleural effusion", "- Input: Output:"] * 20, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_rewrite_runs_caches_and_parses(tiny_llama, tmp_path):
    from s2d_align.keyphrases.llm_rewrite import KeyPhraseRewriter, build_prompt

    cache = tmp_path / "cache.json"
    phrases = ["effusion pleural small left", "pneumothorax"]
    with KeyPhraseRewriter(tiny_llama, cache, max_new_tokens=12) as rewriter:
        first = rewriter.rewrite(phrases)
        assert rewriter.generations == 1
        assert isinstance(first, list) and all(isinstance(p, str) for p in first)
        assert rewriter.rewrite(phrases) == first and rewriter.generations == 1  # in-memory hit
    stored = json.loads(cache.read_text())
    key = rewriter.key(build_prompt(phrases))
    assert stored[key]["input"] == phrases and stored[key]["model"] == str(tiny_llama.resolve())
    again = KeyPhraseRewriter(tiny_llama, cache, max_new_tokens=12)
    assert again.rewrite(phrases) == first and again.generations == 0  # on-disk hit: the model never loads
    assert again._model is None
    other = KeyPhraseRewriter(tiny_llama, cache, max_new_tokens=12, model_id="another-model")
    other.rewrite(phrases)
    assert other.generations == 1  # the model id is part of the key
