"""S2D-Align (arXiv 2511.11066): frozen image and text encoders, the Shallow-to-Deep Memory Adapter, and a causal LLM.

Laid out like transformers' Llava: `S2DAlignModel` (encoders + connector + LLM body) returns the hidden states of the
whole sequence, `S2DAlignForConditionalGeneration` adds the LM head and `GenerationMixin`. The processor writes
`N_mem` placeholder tokens per context modality into the prompt and the model scatters the adapter outputs into
those positions, so hidden states and labels keep the same length (TRL's loss path relies on it).

Self-contained (imports only torch, transformers and the sibling configuration file) because `save_pretrained`
copies it into a Hub repo as remote code.
"""

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from transformers import AutoModel
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.modeling_utils import PreTrainedModel

try:  # relative import inside a Hub repo / package, plain import when the file sits on sys.path
    from .configuration_s2d import MODALITIES, S2DAlignConfig
except ImportError:
    from configuration_s2d import MODALITIES, S2DAlignConfig

# Inputs that carry the context (image, reference, key phrases); `generate` needs them only for the prefill step,
# after which the KV cache holds the prefix.
CONTEXT_INPUTS = (
    "pixel_values", "view_mask", "image_features",
    "reference_input_ids", "reference_attention_mask", "reference_features",
    "keyphrase_input_ids", "keyphrase_attention_mask", "keyphrase_features",
)


@dataclass
class S2DAlignModelOutputWithPast(BaseModelOutputWithPast):
    """`context_embeddings` maps each modality used in this call to its adapter output `(batch, N_mem, llm_width)`."""

    context_embeddings: dict | None = None


@dataclass
class S2DAlignCausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    context_embeddings: dict | None = None


def _segment_mean_pool(features: torch.Tensor, valid: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Masked mean over `num_tokens` contiguous segments of the sequence.

    features: (B, L, D); valid: (B, L) bool. Returns (B, num_tokens, D). Used by the connectors that have no queries
    (`mlp`, `sma_msa`), so every connector yields the same `N_mem` prefix tokens.
    """
    length = features.shape[1]
    segment = torch.arange(length, device=features.device) * num_tokens // length  # (L,)
    assign = nn.functional.one_hot(segment, num_tokens).to(features.dtype)  # (L, N)
    weights = assign.unsqueeze(0) * valid.unsqueeze(-1).to(features.dtype)  # (B, L, N)
    summed = torch.einsum("bln,bld->bnd", weights, features)
    counts = weights.sum(1).clamp(min=1).unsqueeze(-1)
    return summed / counts


def vision_prefix_tokens(vision_config) -> int:
    """Tokens before the patch grid in the image encoder's output: the CLS token, then its register tokens
    (DINOv3 ViT and Dinov2-with-registers put `num_register_tokens` of them after CLS; Rad-DINO / Dinov2 have none)."""
    return 1 + int(getattr(vision_config, "num_register_tokens", 0) or 0)


def sincos_2d_position_embedding(rows: int, columns: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code (as in MAE / ViT-style sin-cos), shape (rows * columns, width), row-major
    like a ViT's patch sequence. Half the channels encode the row, half the column; each half is [sin, cos] of the
    position at `width // 4` frequencies 1 / 10000^(k / (width // 4))."""
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine code needs a width divisible by 4, got {width}")
    quarter = width // 4
    frequency = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)

    def code(positions):  # (n,) -> (n, 2 * quarter)
        angles = positions[:, None].float() * frequency[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    return torch.cat([code(row.reshape(-1)), code(column.reshape(-1))], dim=-1)


def memory_grid_shape(num_queries: int) -> tuple[int, int]:
    """(rows, columns) of the grid that `memory_spatial_prior: grid` lays `num_queries` queries on: the most square
    factorisation with at least as many columns as rows (left / right, a report's first question, gets the finer
    resolution): 64 -> (8, 8), 32 -> (4, 8), 16 -> (4, 4), 8 -> (2, 4)."""
    rows = max(r for r in range(1, int(num_queries ** 0.5) + 1) if num_queries % r == 0)
    return rows, num_queries // rows


def memory_grid_prior(num_queries: int, grid: int, sigma: float) -> torch.Tensor:
    """Log-Gaussian prior (num_queries, grid * grid) of query `i` over the patches of one view (row-major, as a
    ViT's patch sequence): `-((dy / (sigma * h))^2 + (dx / (sigma * w))^2) / 2`, with `(dy, dx)` from the centre of
    the query's cell to the patch centre and `(h, w)` a cell's height and width, all in image fractions."""
    rows, columns = memory_grid_shape(num_queries)
    cell = torch.arange(num_queries)
    query_y = ((cell // columns).double() + 0.5) / rows  # (N,)
    query_x = ((cell % columns).double() + 0.5) / columns
    patch = torch.arange(grid).double().add(0.5).div(grid)  # (G,)
    dy = (query_y[:, None] - patch[None]) * rows / sigma  # (N, G), in sigma units
    dx = (query_x[:, None] - patch[None]) * columns / sigma
    return (-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2)).reshape(num_queries, grid * grid).float()


# -- anatomical attention bias (config `anatomical_bias: masks`) -----------------------------------------------------
def gaussian_smoothing_matrix(size: int, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """(size, size) float64 matrix `G` such that `G @ x` is the 1-D Gaussian smoothing of `x`: weights
    `exp(-d^2 / (2 sigma^2))` for offsets `|d| <= int(truncate * sigma + 0.5)`, normalised to sum 1, with the
    mirror boundary `d c b a | a b c d | d c b a` (SciPy's `ndimage.gaussian_filter1d(mode="reflect")`)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 * (offsets.double() / sigma) ** 2)
    weights = weights / weights.sum()
    columns = (torch.arange(size)[:, None] + offsets[None, :]) % (2 * size)  # the mirror boundary has period 2n
    columns = torch.where(columns >= size, 2 * size - 1 - columns, columns)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.scatter_add_(1, columns, weights.expand(size, -1).contiguous())


def anatomical_layer_sigmas(num_layers: int) -> list[float]:
    """Smoothing scale of each attention layer, in patch widths, coarse (first layer) to fine (last):
    `sigma_l = (num_layers - l + 1) / 3` for `l = 0 .. num_layers - 1`. This is UDEM's schedule (odd kernel sizes
    `k_l = 3 + 2 (num_layers - l)`, `sigma = (k - 1) / 6`) read on the encoder's patch grid instead of their fixed
    32 x 32 grid: a 32-layer LLM goes from 11 patches down to a third of one."""
    return [(num_layers - layer + 1) / 3 for layer in range(num_layers)]


@lru_cache(maxsize=8)
def _layer_smoothing(grid: int, num_layers: int) -> torch.Tensor:
    """(num_layers, grid, grid) float64: each layer's `gaussian_smoothing_matrix`, built once per shape (generation
    asks for them at every decode step)."""
    return torch.stack([gaussian_smoothing_matrix(grid, sigma) for sigma in anatomical_layer_sigmas(num_layers)])


def anatomical_bias_maps(masks: torch.Tensor, grid: int, num_layers: int, scale: float = 1.0) -> torch.Tensor:
    """Per-layer, per-patch attention bias from anatomy masks.

    masks: (B, V, H, W) in [0, 1] (1 inside the lungs or the heart), at the encoder's input size, H = W = grid *
    patch size. For each view: `m` = the share of each patch inside the mask (area mean over the patch), a
    (grid, grid) map; for layer `l`, `s_l = G_l m G_l^T` (`gaussian_smoothing_matrix(grid, sigma_l)`,
    `anatomical_layer_sigmas`), then min-max scaled to [0, 1] over the view's patches (all zeros when `s_l` is
    constant: an empty or full mask biases nothing) and multiplied by `scale`.
    Returns (B, V, num_layers, grid * grid), patches row-major like the encoder's patch sequence.
    """
    batch, views = masks.shape[:2]
    cells = nn.functional.adaptive_avg_pool2d(masks.flatten(0, 1)[:, None].double(), grid)[:, 0]  # (BV, g, g)
    smoothing = _layer_smoothing(grid, num_layers).to(cells.device)  # (L, g, g)
    smooth = torch.einsum("lij,njk,lmk->nlim", smoothing, cells, smoothing).flatten(2)  # G_l m G_l^T: (BV, L, g*g)
    low, high = smooth.amin(2, keepdim=True), smooth.amax(2, keepdim=True)
    span = high - low
    scaled = torch.where(span > 1e-9, (smooth - low) / span.clamp_min(1e-9), torch.zeros_like(smooth))
    return (scale * scaled).view(batch, views, num_layers, grid * grid).float()


def _anatomical_attention_hook(module, args, kwargs):
    """Forward pre-hook of each LLM attention module under `anatomical_bias: masks` with the `llava` connector:
    adds layer `module.layer_idx`'s bias to the logits from text queries to image-patch keys by turning the
    attention mask into an additive float mask (eager and SDPA both add it to the logits). The bias travels in the
    `s2d_anatomical_bias` keyword, (text_query (B, K) bool, key_bias (B, num_layers, K)) over the K keys of the
    whole sequence so far (prefix included, so it also holds when decoding with a KV cache); queries are the last Q
    of those K positions."""
    state = kwargs.pop("s2d_anatomical_bias", None)
    if state is None:
        return None
    text_query, key_bias = state
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    queries, keys = hidden.shape[1], key_bias.shape[-1]
    bias = text_query[:, keys - queries:, None].to(hidden.dtype) * key_bias[:, module.layer_idx, None, :].to(hidden.dtype)
    mask = kwargs.get("attention_mask")
    lowest = torch.finfo(hidden.dtype).min
    if mask is None:  # SDPA skipped the mask (causal, no padding): build the causal one
        allowed = torch.arange(keys, device=hidden.device)[None, :] <= torch.arange(keys - queries, keys,
                                                                                    device=hidden.device)[:, None]
        mask = torch.where(allowed, 0.0, lowest).to(hidden.dtype)[None, None]
    elif mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, lowest).to(hidden.dtype)
    if mask.shape[-1] > keys:  # a static cache's mask spans its whole length
        bias = nn.functional.pad(bias, (0, mask.shape[-1] - keys))
    kwargs["attention_mask"] = mask + bias[:, None]
    return args, kwargs


class S2DMemoryBank(nn.Module):
    """`Q_mem`: `N_mem` learnable query vectors of the image-encoder width, shape (N_mem, d_v)."""

    def __init__(self, num_queries: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_queries, width))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)


class S2DMemoryAdapter(nn.Module):
    """One modality's adapter: `Z = LN(MLP(Attn(Q, W_in F, W_in F)))`, output (B, N_mem, llm_width).

    `kind` selects the paper's connector variants (Table 4):
      - `sma`: queries are the (shared or own) memory bank, 8-head cross-attention to the features;
      - `sma_msa`: multi-head self-attention over the features, then pooled to N_mem tokens (no memory);
      - `mlp`: the features pooled to N_mem tokens (no attention);
      - `qformer`: own learned queries through a small Q-Former (self-attn + cross-attn + FFN per layer);
      - `llava`: LLaVA-1.5's `mlp2x_gelu` projector, Linear -> GELU -> Linear over every token, no pooling and no
        LayerNorm (as in LLaVA), output (B, L, llm_width): one LLM token per patch.
    """

    def __init__(self, kind: str, feature_dim: int, memory_dim: int, output_dim: int, num_queries: int,
                 num_heads: int, mlp_depth: int, qformer_layers: int = 2, own_memory: bool = False):
        super().__init__()
        self.kind = kind
        self.num_queries = num_queries
        # keys/values are projected to d_v when the modality's width differs (e.g. a 384-wide text encoder)
        self.input_proj = nn.Linear(feature_dim, memory_dim) if feature_dim != memory_dim else nn.Identity()
        self.memory_bank = S2DMemoryBank(num_queries, memory_dim) if own_memory else None
        if kind in ("sma", "sma_msa"):
            self.attention = nn.MultiheadAttention(memory_dim, num_heads, batch_first=True)
        elif kind == "qformer":
            layer = nn.TransformerDecoderLayer(memory_dim, num_heads, 4 * memory_dim, dropout=0.0,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.qformer = nn.TransformerDecoder(layer, qformer_layers)
        if kind == "llava":
            mlp_depth = 2  # LLaVA-1.5's projector is exactly two linear layers, whatever adapter_mlp_depth says
        layers, width = [], memory_dim
        for i in range(mlp_depth):
            layers.append(nn.Linear(width, output_dim))
            if i < mlp_depth - 1:
                layers.append(nn.GELU())
            width = output_dim
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.Identity() if kind == "llava" else nn.LayerNorm(output_dim)

    # Attention-map hook: with `output_attentions = True` on an `sma` adapter, each call keeps its cross-attention
    # weights of the memory queries over the features in `last_attentions`, (B, heads, N_mem, L), not averaged.
    # Off by default: asking MultiheadAttention for weights leaves its fused kernel (s2d_align.attention uses this).
    output_attentions = False
    last_attentions = None

    def forward(self, features: torch.Tensor, valid: torch.Tensor, memory: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """features: (B, L, feature_dim); valid: (B, L) bool; memory: (B, N_mem, d_v) shared queries or None;
        bias: (B, L) added to the cross-attention logits of every query and head, or (B, N_mem, L) per query (`sma`
        only: the anatomical bias, the memory grid prior)."""
        features = self.input_proj(features.to(self.mlp[0].weight.dtype))
        if self.memory_bank is not None:
            memory = self.memory_bank(features.shape[0])
        if bias is not None and self.kind != "sma":
            raise ValueError(f"an attention bias over the features needs the sma adapter, not {self.kind!r}")
        if self.kind == "sma":
            padding, attn_mask = ~valid, None
            if bias is not None:  # (B * heads, N_mem, L) float, the layout nn.MultiheadAttention takes; the padding
                heads = self.attention.num_heads  # goes in too (it refuses a bool and a float mask together)
                bias = bias if bias.ndim == 3 else bias[:, None]  # (B, 1 or N_mem, L)
                bias = bias.to(features.dtype).masked_fill(padding[:, None], torch.finfo(features.dtype).min)
                attn_mask = bias[:, None].expand(-1, heads, memory.shape[1], -1)
                padding, attn_mask = None, attn_mask.reshape(-1, memory.shape[1], bias.shape[-1])
            hidden, weights = self.attention(memory, features, features, key_padding_mask=padding, attn_mask=attn_mask,
                                             need_weights=self.output_attentions, average_attn_weights=False)
            self.last_attentions = weights if self.output_attentions else None
        elif self.kind == "sma_msa":
            hidden, _ = self.attention(features, features, features, key_padding_mask=~valid, need_weights=False)
            hidden = _segment_mean_pool(hidden, valid, self.num_queries)
        elif self.kind == "mlp":
            hidden = _segment_mean_pool(features, valid, self.num_queries)
        elif self.kind == "llava":  # every token; absent-view tokens are dropped when scattered into the prompt
            hidden = features
        else:  # qformer
            hidden = self.qformer(memory, features, memory_key_padding_mask=~valid)
        return self.norm(self.mlp(hidden))


class S2DAlignConnector(nn.Module):
    """The Shallow-to-Deep Memory Adapter: one adapter per modality, and under `sma` one `Q_mem` shared by all."""

    def __init__(self, config: S2DAlignConfig):
        super().__init__()
        d_v = config.vision_config.hidden_size
        d_t = config.text_encoder_config.hidden_size
        d_llm = config.text_config.hidden_size
        kind = "sma" if config.connector in ("sma", "sma_unshared", "llava") else config.connector
        needs_queries = config.connector in ("sma_unshared", "qformer")
        # The paper's key design: a single memory bank for every adapter and stage (Table 4, "w/o Shared Memory").
        # `llava` replaces only the image adapter; its text adapters keep the shared bank so stages 2-3 still run.
        shared = config.connector in ("sma", "llava")
        self.memory_bank = S2DMemoryBank(config.num_memory_queries, d_v) if shared else None
        widths = {"image": d_v, "reference": d_t, "keyphrases": d_t}
        kinds = {m: kind for m in MODALITIES}
        if config.connector == "llava":
            kinds["image"] = "llava"
        self.adapters = nn.ModuleDict({
            modality: S2DMemoryAdapter(kinds[modality], widths[modality], d_v, d_llm, config.num_memory_queries,
                                       config.adapter_num_heads, config.adapter_mlp_depth,
                                       config.qformer_num_layers, own_memory=needs_queries)
            for modality in MODALITIES
        })

    def forward(self, modality: str, features: torch.Tensor, valid: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.memory_bank(features.shape[0]) if self.memory_bank is not None else None
        return self.adapters[modality](features, valid, memory, bias)


class S2DAlignPreTrainedModel(PreTrainedModel):
    config: S2DAlignConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["LlamaDecoderLayer", "Dinov2Layer", "BertLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, S2DMemoryBank):
            nn.init.normal_(module.weight, std=0.02)


class S2DAlignModel(S2DAlignPreTrainedModel):
    """Image encoder `E_v`, text encoder `E_t`, the connector and the LLM body (no LM head)."""

    def __init__(self, config: S2DAlignConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.text_encoder = AutoModel.from_config(config.text_encoder_config, add_pooling_layer=False)
        self.view_embedding = nn.Embedding(config.max_views, config.vision_config.hidden_size)
        self.connector = S2DAlignConnector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        if config.anatomical_bias == "masks" and config.connector == "llava":
            for module in self.language_model.modules():  # LlamaAttention, GPT2Attention, ...: one per layer
                if type(module).__name__.endswith("Attention") and getattr(module, "layer_idx", None) is not None:
                    module.register_forward_pre_hook(_anatomical_attention_hook, with_kwargs=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # -- frozen encoders --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen patch features of every view.

        pixel_values: (B, V, 3, H, W), V <= max_views; view_mask: (B, V) bool, False for padded (absent) views.
        Returns (B, V, P, d_v), zeros at absent views. Only present views go through the encoder.
        """
        batch, views = pixel_values.shape[:2]
        if views > self.config.max_views:
            raise ValueError(f"got {views} views per study but this model takes at most max_views="
                             f"{self.config.max_views}")
        if view_mask is None:
            view_mask = torch.ones(batch, views, dtype=torch.bool, device=pixel_values.device)
        present = pixel_values[view_mask].to(self.vision_tower.dtype)  # (n_present, 3, H, W)
        hidden = self.vision_tower(pixel_values=present).last_hidden_state
        patches = hidden[:, vision_prefix_tokens(self.config.vision_config):]  # patch tokens only
        out = patches.new_zeros(batch, views, *patches.shape[1:])
        out[view_mask] = patches
        return out

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frozen token features (B, L, d_t) of a reference report or key phrases."""
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def patch_position_code(self, patches: int) -> torch.Tensor:
        """The `sincos2d` code (patches, d_v) of the encoder's patch grid (config `image_position_embedding`)."""
        side = self._patch_grid_side(patches, "image_position_embedding='sincos2d'")
        return sincos_2d_position_embedding(side, side, self.config.vision_config.hidden_size)

    def memory_grid_bias(self, patches: int) -> torch.Tensor:
        """`memory_grid_prior` (N_mem, patches) of this model's patch grid (config `memory_spatial_prior: grid`)."""
        side = self._patch_grid_side(patches, "memory_spatial_prior='grid'")
        return memory_grid_prior(self.config.num_memory_queries, side, self.config.memory_spatial_prior_sigma)

    def _patch_grid_side(self, patches: int, option: str) -> int:
        """The encoder's square patch grid side; a clear error when `patches` tokens are not that grid."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        if side * side != patches:
            raise ValueError(f"{option} expects a {side}x{side} patch grid (image_size {vision.image_size}, "
                             f"patch_size {vision.patch_size}), got {patches} patches")
        return side

    # -- context ----------------------------------------------------------------------------------------------------
    def get_context_embeddings(
        self,
        pixel_values=None, view_mask=None, image_features=None,
        reference_input_ids=None, reference_attention_mask=None, reference_features=None,
        keyphrase_input_ids=None, keyphrase_attention_mask=None, keyphrase_features=None,
        anatomy_masks=None,
    ) -> dict:
        """Adapter outputs `{modality: (B, N_mem, llm_width)}` for the modalities given.

        Each modality comes either raw (pixels / token ids) or as cached frozen-encoder features
        (`image_features` (B, V, P, d_v) with `view_mask`; `*_features` (B, L, d_t) with the attention mask).
        `anatomy_masks` (B, V, H, W): under `anatomical_bias: masks` with `sma`, the image adapter's cross-attention
        gets `anatomical_bias_maps(anatomy_masks, grid, 1)` (one attention layer: one scale).
        """
        contexts = {}
        if pixel_values is not None or image_features is not None:
            given = (image_features if image_features is not None else pixel_values).shape[1]
            if self.config.multiview == "stitch" and given > 1:  # a processor out of step with this model
                raise ValueError(f"this model takes stitched studies (multiview='stitch': one image per study) but got "
                                 f"{given} views per study; use the processor saved with it")
            if image_features is None:
                image_features = self.encode_images(pixel_values, view_mask)
            batch, views, patches, width = image_features.shape
            if view_mask is None:
                view_mask = torch.ones(batch, views, dtype=torch.bool, device=image_features.device)
            view_ids = torch.arange(views, device=image_features.device)
            tokens = image_features.to(self.view_embedding.weight.dtype) + self.view_embedding(view_ids)[:, None]
            if self.config.image_position_embedding == "sincos2d":
                tokens = tokens + self.patch_position_code(patches).to(tokens)
            valid = view_mask[:, :, None].expand(-1, -1, patches).reshape(batch, views * patches)
            bias = None
            if self.config.anatomical_bias == "masks" and self.config.connector == "sma":
                maps = self.anatomical_maps(anatomy_masks, views, 1)  # (B, V, 1, P)
                bias = maps[:, :, 0].reshape(batch, views * patches).to(tokens.device)
            if self.config.memory_spatial_prior == "grid":  # the same cell in every view: (B, N_mem, V * P)
                prior = self.memory_grid_bias(patches).to(tokens).repeat(1, views).expand(batch, -1, -1)
                bias = prior if bias is None else bias[:, None] + prior
            contexts["image"] = self.connector("image", tokens.reshape(batch, views * patches, width), valid, bias)
        text_inputs = {"reference": (reference_input_ids, reference_attention_mask, reference_features),
                       "keyphrases": (keyphrase_input_ids, keyphrase_attention_mask, keyphrase_features)}
        for modality, (ids, mask, features) in text_inputs.items():
            if ids is None and features is None:
                continue
            if mask is None:
                raise ValueError(f"{modality} inputs need their attention mask")
            if features is None:
                features = self.encode_text(ids, mask)
            contexts[modality] = self.connector(modality, features, mask.bool())
        return contexts

    def anatomical_maps(self, anatomy_masks: torch.Tensor | None, views: int, num_layers: int) -> torch.Tensor:
        """`anatomical_bias_maps` of this model's patch grid, (B, V, num_layers, P); a clear error without masks."""
        if anatomy_masks is None:
            raise ValueError("this model has anatomical_bias='masks': give anatomy_masks (B, V, H, W), a lung + heart "
                             "mask per image, e.g. S2DAlignProcessor(images=..., anatomy_masks=...)")
        if anatomy_masks.ndim != 4 or anatomy_masks.shape[1] < views:
            raise ValueError(f"anatomy_masks must be (batch, views, height, width) with a mask for each of the {views} "
                             f"views, got shape {tuple(anatomy_masks.shape)}")
        vision = self.config.vision_config
        return anatomical_bias_maps(anatomy_masks[:, :views].float(), vision.image_size // vision.patch_size,
                                    num_layers, self.config.anatomical_bias_scale)

    def anatomical_llm_bias(self, token_ids: torch.Tensor, anatomy_masks: torch.Tensor | None) -> tuple:
        """`(text_query (B, K) bool, key_bias (B, num_layers, K))` for the LLM attention hooks (`llava` connector):
        the k-th image placeholder of a row is the k-th patch of its present views, in order (as `scatter_context`
        places them); every other key gets 0, and only non-image positions count as text queries."""
        is_image = token_ids == self.config.image_token_id
        layers = self.config.text_config.num_hidden_layers
        patches = self.config.image_tokens_per_view
        maps = self.anatomical_maps(anatomy_masks, anatomy_masks.shape[1] if anatomy_masks is not None else 1, layers)
        batch, views = maps.shape[:2]
        per_layer = maps.permute(0, 2, 1, 3).reshape(batch, layers, views * patches).to(token_ids.device)
        # row b has n_b placeholders: its first n_b patches (present views come first); no host sync per row
        placed = torch.arange(views * patches, device=token_ids.device)[None] < is_image.sum(1, keepdim=True)
        key_bias = per_layer.new_zeros(batch, layers, token_ids.shape[1])
        key_bias = key_bias.masked_scatter(is_image[:, None].expand_as(key_bias),
                                           per_layer[placed[:, None].expand_as(per_layer)])
        return ~is_image, key_bias

    def image_token_mask(self, image_context: torch.Tensor, view_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, V * P) bool: which tokens of an all-patch (`llava`) image context belong to present views; None for
        the pooling connectors (all `N_mem` tokens are used). Absent (padded) views have no placeholders: a study
        costs the LLM `views * P` tokens, and its output does not depend on the other studies of the batch."""
        if self.config.connector != "llava" or view_mask is None:
            return None
        batch, tokens = image_context.shape[:2]
        per_view = tokens // view_mask.shape[1]
        return view_mask[:, :, None].expand(-1, -1, per_view).reshape(batch, tokens).to(image_context.device)

    def scatter_context(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, contexts: dict,
                        image_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Replace each modality's placeholder tokens with its adapter output; the counts must match exactly, row by
        row. `image_valid` (B, N) selects the image-context tokens to place (`image_token_mask`; None: all)."""
        for modality, token_id in self.config.placeholder_token_ids.items():
            mask = input_ids == token_id
            found = int(mask.sum())
            if modality not in contexts:
                if found:
                    raise ValueError(f"the prompt holds {found} {modality} placeholder tokens but no {modality} "
                                     "inputs were given")
                continue
            context = contexts[modality]
            keep = image_valid if modality == "image" and image_valid is not None else None
            source = context if keep is None else context[keep]
            if keep is None:
                keep = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
            expected = int(keep.sum())
            if found != expected or not torch.equal(mask.sum(1).cpu(), keep.sum(1).cpu()):
                raise ValueError(
                    f"placeholder mismatch for {modality}: the prompt holds {found} placeholder tokens (id {token_id}) "
                    f"but the adapter produced {expected} embeddings ({context.shape[0]} x {context.shape[1]}"
                    f"{', present views only' if image_valid is not None and modality == 'image' else ''}); build the "
                    "inputs with S2DAlignProcessor (it writes the model's number of placeholders per sample)")
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1),
                                                         source.to(inputs_embeds.dtype))
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        reference_input_ids: torch.LongTensor | None = None,
        reference_attention_mask: torch.Tensor | None = None,
        reference_features: torch.Tensor | None = None,
        keyphrase_input_ids: torch.LongTensor | None = None,
        keyphrase_attention_mask: torch.Tensor | None = None,
        keyphrase_features: torch.Tensor | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,  # accepted and ignored: TRL calls the body with the whole batch
        anatomy_masks: torch.Tensor | None = None,
        anatomy_token_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> S2DAlignModelOutputWithPast:
        """input_ids: (B, S) with the placeholders; returns `last_hidden_state` (B, S, llm_width).
        `anatomy_masks` (B, V, H, W): see `S2DAlignConfig.anatomical_bias`; `anatomy_token_ids` (B, K): the whole
        sequence so far when decoding with a KV cache (default: `input_ids`), where the image placeholders are."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        contexts = self.get_context_embeddings(
            pixel_values, view_mask, image_features, reference_input_ids, reference_attention_mask,
            reference_features, keyphrase_input_ids, keyphrase_attention_mask, keyphrase_features, anatomy_masks)
        if self.config.anatomical_bias == "masks" and self.config.connector == "llava":
            if "flash" in str(self.language_model.config._attn_implementation):
                raise ValueError("anatomical_bias='masks' adds a bias to the attention logits, which flash attention "
                                 "cannot take: load the model with attn_implementation='sdpa' or 'eager'")
            token_ids = anatomy_token_ids if anatomy_token_ids is not None else input_ids
            if token_ids is None:
                raise ValueError("anatomical_bias='masks' needs input_ids (where the image placeholders are)")
            kwargs["s2d_anatomical_bias"] = self.anatomical_llm_bias(token_ids, anatomy_masks)
        if input_ids is not None:
            image_valid = self.image_token_mask(contexts["image"], view_mask) if "image" in contexts else None
            inputs_embeds = self.scatter_context(input_ids, inputs_embeds, contexts, image_valid)
        elif contexts:
            raise ValueError("context inputs need input_ids (the placeholder positions)")
        kwargs.pop("num_items_in_batch", None)
        outputs = self.language_model(attention_mask=attention_mask, position_ids=position_ids,
                                      past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                                      use_cache=use_cache, **kwargs)
        return S2DAlignModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            context_embeddings=contexts or None)


# Parameter groups trained in each curriculum stage (DESIGN section 2); the encoders and the LLM base never train.
STAGE_TRAINABLE = {
    1: ("connector.memory_bank", "connector.adapters.image", "view_embedding"),
    2: ("connector.memory_bank", "connector.adapters.image", "view_embedding", "connector.adapters.reference",
        "lora_"),
    3: ("connector.memory_bank", "connector.adapters.image", "view_embedding", "connector.adapters.reference",
        "connector.adapters.keyphrases", "lora_"),
}


class S2DAlignForConditionalGeneration(S2DAlignPreTrainedModel, GenerationMixin):
    """S2D-Align with its LM head: `model.generate(**processor(images=...))` writes a findings section."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: S2DAlignConfig):
        super().__init__(config)
        self.model = S2DAlignModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:  # a remote-code save: `AutoModel` must resolve to the generator too
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": f"{module}.{type(self).__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def train(self, mode: bool = True):
        """Like `nn.Module.train`, but the frozen encoders stay in eval mode (no dropout, fixed features)."""
        super().train(mode)
        self.model.vision_tower.eval()
        self.model.text_encoder.eval()
        return self

    def set_stage(self, stage: int) -> int:
        """Set `requires_grad` for a curriculum stage (1, 2 or 3); returns the number of trainable parameters.

        Stage 1 trains `Q_mem` + the image adapter (and view embedding); stage 2 adds the reference adapter and the
        LoRA weights (when PEFT has injected them); stage 3 adds the key-phrase adapter. Everything else, the
        encoders and the LLM base weights included, is frozen. Works on the bare model and under a PEFT wrapper
        (names are matched anywhere in the parameter path).
        """
        if stage not in STAGE_TRAINABLE:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        groups = STAGE_TRAINABLE[stage]
        count = 0
        for name, param in self.named_parameters():
            # PEFT's modules_to_save keeps a frozen `original_module` copy beside the trained one
            train = any(group in name for group in groups) and "original_module" not in name
            param.requires_grad_(train)
            count += param.numel() if train else 0
        self.train(self.training)
        return count

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        reference_input_ids: torch.LongTensor | None = None,
        reference_attention_mask: torch.Tensor | None = None,
        reference_features: torch.Tensor | None = None,
        keyphrase_input_ids: torch.LongTensor | None = None,
        keyphrase_attention_mask: torch.Tensor | None = None,
        keyphrase_features: torch.Tensor | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        anatomy_masks: torch.Tensor | None = None,
        anatomy_token_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> S2DAlignCausalLMOutputWithPast:
        """Context inputs as in `S2DAlignModel.forward`; `labels` (B, S) with -100 outside the report tokens.

        Returns logits (B, S, vocab) (or the last `logits_to_keep` positions) and the causal LM loss.
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, pixel_values=pixel_values,
            view_mask=view_mask, image_features=image_features, reference_input_ids=reference_input_ids,
            reference_attention_mask=reference_attention_mask, reference_features=reference_features,
            keyphrase_input_ids=keyphrase_input_ids, keyphrase_attention_mask=keyphrase_attention_mask,
            keyphrase_features=keyphrase_features, use_cache=use_cache, anatomy_masks=anatomy_masks,
            anatomy_token_ids=anatomy_token_ids, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.text_config.vocab_size, **kwargs)
        return S2DAlignCausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, context_embeddings=outputs.context_embeddings)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate` that never emits the placeholder tokens (`<image>`, `<reference>`,
        `<keyphrases>`): they stand for adapter outputs in the prompt and mean nothing as text. They are added to the
        `suppress_tokens` of the call (or of its / the model's generation config), whatever those already hold."""
        config = kwargs.get("generation_config") or self.generation_config
        suppress = kwargs.get("suppress_tokens", getattr(config, "suppress_tokens", None)) or []
        kwargs["suppress_tokens"] = sorted(set(suppress) | set(self.config.placeholder_token_ids.values()))
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, is_first_iteration=is_first_iteration,
                                                       **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in CONTEXT_INPUTS:  # the KV cache already holds the prefix
                inputs.pop(key, None)
        if kwargs.get("anatomy_masks") is not None:  # the anatomical bias spans every key, cached ones included
            inputs["anatomy_masks"], inputs["anatomy_token_ids"] = kwargs["anatomy_masks"], input_ids
        return inputs


__all__ = ["S2DAlignModel", "S2DAlignForConditionalGeneration", "S2DAlignPreTrainedModel"]
