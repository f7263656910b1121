"""S2D-Align model configuration.

Self-contained (imports only transformers and huggingface_hub) because `save_pretrained` copies this file
into a Hub repo as remote code.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

CONNECTORS = ("sma", "sma_unshared", "sma_msa", "mlp", "qformer", "llava")
MODALITIES = ("image", "reference", "keyphrases")
MULTIVIEW_MODES = ("concat", "stitch")


@strict
class S2DAlignConfig(PreTrainedConfig):
    r"""
    Configuration of an S2D-Align model (arXiv 2511.11066): a frozen image encoder (Dinov2 family, e.g. Rad-DINO),
    a frozen text encoder (BERT family, e.g. CXR-BERT) for reference reports and key phrases, the Shallow-to-Deep
    Memory Adapter (SMA) and a causal LLM (Llama family, e.g. Vicuna-7B-v1.5).

    The defaults describe the real checkpoints: `microsoft/rad-dino` (ViT-B/14, 518 px, 1369 patch tokens, width
    768), `microsoft/BiomedVLP-CXR-BERT-specialized` (BERT-base, stored as a plain `BertConfig`) and
    `lmsys/vicuna-7b-v1.5` (vocabulary grown from 32000 to 32064 to hold the three placeholder tokens, padded to a
    multiple of 64 as Llava-1.5 does).

    Auto classes: both `AutoModel` and `AutoModelForImageTextToText` resolve to
    `S2DAlignForConditionalGeneration`. A report generator is only useful with its LM head, and users load it with
    `AutoModel.from_pretrained(repo, trust_remote_code=True)` and call `.generate()`; mapping `AutoModel` to a
    head-less base model (as transformers does for Llava) would make that call fail.

    Args:
        vision_config: config of the image encoder `E_v` (a `Dinov2Config`).
        text_encoder_config: config of the text encoder `E_t` (a `BertConfig`).
        text_config: config of the LLM (a `LlamaConfig`).
        num_memory_queries: `N_mem`, the number of memory queries in `Q_mem`; every adapter yields this many tokens.
        adapter_num_heads: heads of each adapter's cross-attention (8 in the paper).
        adapter_mlp_depth: linear layers in each adapter's MLP (3 in the paper).
        connector: `sma` (the paper's: one `Q_mem` shared by all adapters), `sma_unshared` (one memory bank per
            adapter), `sma_msa` (self-attention over the features + MLP, no memory bank), `mlp` (Llava-style MLP),
            `qformer` (MLP + a small Q-Former); the ablations of the paper's Table 4. `llava` (the LLaVA-1.5 /
            RRG24-style peer, not an S2D-Align variant): a 2-layer MLP (GELU) over every patch token, no pooling and no
            LayerNorm, so the image prefix holds `image_tokens_per_view` tokens per view (1369 for Rad-DINO at 518 px)
            and the processor writes that many `<image>` placeholders per present view; the reference and key-phrase
            adapters stay `sma` (shared `Q_mem`), so the curriculum still runs with it.
        qformer_num_layers: layers of the Q-Former used by the `qformer` connector.
        max_views: the largest number of images (views) one study may have.
        multiview: how a study's views reach the image encoder. `concat` (default, the paper's): each view is
            encoded on its own and the patch tokens of all views go to the connector (under `llava`, one block of
            `image_tokens_per_view` placeholders per view). `stitch` (RRG24's): the processor stitches the views the
            view rule keeps (at most `max_views`) into one image, side by side, and the model sees one view per
            study, so the image prefix is as long as one image's; the exact rule is `processing_s2d.stitch_views`.
            The processor carries the same setting (`S2DAlignProcessor(multiview=...)`); the model refuses more
            than one view per study under `stitch`.
        image_position_embedding: `none` (the paper's SMA: the adapter sees the encoder's patch tokens as they are)
            or `sincos2d` (ours, not from the paper): a fixed 2-D sine-cosine code of each patch's row and column is
            added to the patch tokens before the image adapter, so its cross-attention and what it passes on know
            *where* a patch is, not only what it shows. No parameter is added. Measured on the phantom set (issue
            14): without it the image adapter's output lost part of the side and level that the encoder's patch
            tokens carry (linear-probe accuracy 1.00 on the patches, 0.73-0.93 on the adapter output).
        image_token_id / reference_token_id / keyphrase_token_id: LLM ids of the placeholder tokens that the
            processor writes `N_mem` times each and the model replaces with the adapter outputs.
        section: the report section the model writes, `findings` or `impression` (RRG24 trained one model per
            section); training sets it from the prepared dataset (`s2d prepare --section`).
        anatomical_bias: `none` (default, the paper's) or `masks` (the layer-wise anatomical attention of Muniz-De-Leon
            et al. 2025, arXiv 2512.16841, UDEM): a lung + heart mask per image (`anatomy_masks`, made by the
            processor with the image's own resizing and cropping) becomes an additive bias on attention logits
            towards the image patches inside it, smoothed coarse to fine; no trainable parameter. Under `llava` it
            is added in every LLM layer `l` to the logits from text positions to image-patch positions; under `sma`
            to the image adapter's cross-attention over the patches. The function is
            `modeling_s2d.anatomical_bias_maps`.
        anatomical_bias_scale: the bias where the smoothed mask is largest (it is 0 where it is smallest), in logit
            units; 1.0 as in UDEM's code, whose maps lie in [0, 1].
        memory_spatial_prior: `none` (default, the paper's SMA: each memory query may attend anywhere) or `grid`
            (ours, not from the paper; `sma` only): the image adapter's `N_mem` queries are laid on a grid over the
            patch grid (`modeling_s2d.memory_grid_shape`, e.g. 4 x 8 for 32 queries, 8 x 8 for 64) and query `i`'s
            cross-attention logits get the fixed log-Gaussian prior `-d^2 / (2 sigma^2)` of the distance from cell
            `i`'s centre to each patch centre, in units of a cell (`modeling_s2d.memory_grid_prior`), in every view.
            The queries still choose by content within and around their cell, the memory bank stays shared, the text
            adapters are untouched, no parameter is added; what changes is that the `i`-th image token always
            describes the same region, as the all-patch `llava` prefix does. Measured on the phantom set (issue 14):
            the side is lost between the memory adapter and a small LLM, not in the encoder or the recipe.
        memory_spatial_prior_sigma: `sigma` of that prior in cell widths (1.0: a query's weight falls to e^-1/2 at
            its neighbours' centres).
    """

    model_type = "s2d_align"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="dinov2",
            init_kwargs={
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "intermediate_size": 3072,  # mlp_ratio 4
                "patch_size": 14,
                "image_size": 518,
                "layerscale_value": 1e-5,
            },
        ),
        "text_encoder_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="bert",
            init_kwargs={"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={
                "vocab_size": 32064,
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "pad_token_id": 0,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_encoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_memory_queries: int = 64
    adapter_num_heads: int = 8
    adapter_mlp_depth: int = 3
    connector: Literal["sma", "sma_unshared", "sma_msa", "mlp", "qformer", "llava"] = "sma"
    qformer_num_layers: int = 2
    max_views: int = 2
    multiview: Literal["concat", "stitch"] = "concat"
    image_position_embedding: Literal["none", "sincos2d"] = "none"
    image_token_id: int = 32000
    reference_token_id: int = 32001
    keyphrase_token_id: int = 32002
    tie_word_embeddings: bool = False
    section: Literal["findings", "impression"] = "findings"
    anatomical_bias: Literal["none", "masks"] = "none"
    anatomical_bias_scale: float = 1.0
    memory_spatial_prior: Literal["none", "grid"] = "none"
    memory_spatial_prior_sigma: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.connector not in CONNECTORS:
            raise ValueError(f"connector must be one of {CONNECTORS}, got {self.connector!r}")
        if self.adapter_mlp_depth < 1:
            raise ValueError(f"adapter_mlp_depth must be >= 1, got {self.adapter_mlp_depth}")
        if self.max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {self.max_views}")
        if self.multiview not in MULTIVIEW_MODES:
            raise ValueError(f"multiview must be one of {MULTIVIEW_MODES}, got {self.multiview!r}")
        if self.image_position_embedding not in ("none", "sincos2d"):
            raise ValueError("image_position_embedding must be 'none' or 'sincos2d', got "
                             f"{self.image_position_embedding!r}")
        width = self.vision_config.hidden_size
        if width % self.adapter_num_heads:
            raise ValueError(f"vision width {width} is not divisible by adapter_num_heads={self.adapter_num_heads}")
        ids = self.placeholder_token_ids
        if len(set(ids.values())) != len(ids) or max(ids.values()) >= self.text_config.vocab_size:
            raise ValueError(f"placeholder token ids {ids} must be distinct and < the LLM vocab size "
                             f"{self.text_config.vocab_size}")
        if self.anatomical_bias not in ("none", "masks"):
            raise ValueError(f"anatomical_bias must be 'none' or 'masks', got {self.anatomical_bias!r}")
        if self.anatomical_bias == "masks" and self.connector not in ("sma", "llava"):
            raise ValueError("anatomical_bias='masks' acts on attention over image patches: the `llava` connector's "
                             f"LLM attention or the `sma` adapter's cross-attention, not connector={self.connector!r}")
        if self.memory_spatial_prior == "grid" and self.connector != "sma":
            raise ValueError("memory_spatial_prior='grid' lays the shared memory queries of the `sma` image adapter on "
                             f"the patch grid; connector={self.connector!r} has no such queries")
        if self.memory_spatial_prior_sigma <= 0:
            raise ValueError(f"memory_spatial_prior_sigma must be > 0, got {self.memory_spatial_prior_sigma}")
        if self.section not in ("findings", "impression"):
            raise ValueError(f"section must be 'findings' or 'impression', got {self.section!r}")

    @property
    def image_tokens_per_view(self) -> int | None:
        """Image-prefix tokens per view under the all-patch `llava` connector (the patch grid, e.g. 37 x 37 = 1369);
        None for the pooling connectors, whose image prefix is `num_memory_queries` tokens whatever the views."""
        if self.connector != "llava":
            return None
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def placeholder_token_ids(self) -> dict:
        """Placeholder token id of each context modality, in prefix order."""
        return {"image": self.image_token_id, "reference": self.reference_token_id,
                "keyphrases": self.keyphrase_token_id}


__all__ = ["S2DAlignConfig"]
