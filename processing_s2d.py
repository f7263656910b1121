"""S2D-Align processor: radiographs, a prompt with placeholders (`text`, as in Llava), training targets with masked
labels (`suffix`, as in PaliGemma), context texts, and a chat template.

Self-contained (imports only numpy, PIL, torch and transformers) because `save_pretrained` copies it into a Hub
repo as remote code.
"""

import json
import os
import re

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_PROMPT = "USER: {context}\nWrite the findings section of the radiology report for this chest X-ray."
DEFAULT_ANSWER_MARKER = " ASSISTANT:"
MIN_IMAGE_SIDE = 16  # smaller images carry no readable anatomy; refusing them beats silently upscaling noise
MAX_IMAGE_SIDE = 4096  # larger ones are downsampled first (every encoder resizes to <= 518 px anyway)

# -- which views of a study the model sees ------------------------------------------------------------------------
# One rule, used everywhere a study's images become model input: `s2d prepare` (MIMIC-CXR raw and annotation modes,
# IU X-Ray), the training collator, the feature cache and generation all call `select_views`.
# DICOM ViewPosition values of MIMIC-CXR; frontal ones first, PA (the standard erect view) before AP (portable).
FRONTAL_VIEWS = ("PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD")
LATERAL_VIEWS = ("LATERAL", "LL", "RL")
VIEW_RULE = ("frontal first (PA, then AP, then the other frontal positions), then lateral (LATERAL, then LL, RL), "
             "then any other or unknown position (oblique, swimmers, ...); the study's own order breaks ties; the "
             "first max_views are kept")


def view_rank(position) -> int:
    """Sort key of a DICOM view position under `VIEW_RULE` (unknown / empty positions sort last)."""
    position = (position or "").strip().upper()
    if position in FRONTAL_VIEWS:
        return FRONTAL_VIEWS.index(position)
    if position in LATERAL_VIEWS:
        return len(FRONTAL_VIEWS) + LATERAL_VIEWS.index(position)
    return len(FRONTAL_VIEWS) + len(LATERAL_VIEWS)


def select_views(views, positions=None, max_views=None) -> list:
    """Indices into `views` of the views the model sees, in the order it sees them (view 0 first), by `VIEW_RULE`.

    `positions` are the views' DICOM ViewPosition values (None or "" when unknown: the given order is kept, so put
    the frontal view first). At most `max_views` indices (None: all of them).
    """
    positions = list(positions) if positions is not None else []
    if positions and len(positions) != len(views):
        raise ValueError(f"got {len(positions)} view positions for {len(views)} images")
    positions = positions or [""] * len(views)
    order = sorted(range(len(views)), key=lambda i: (view_rank(positions[i]), i))
    return order if max_views is None else order[:max_views]


def load_radiograph(image, name: str | None = None) -> Image.Image:
    """Open a radiograph and return it as 8-bit RGB, whatever its storage.

    `image` is a path, a PIL image or a numpy array. Conversions (documented behaviour):
      - 16-bit / 32-bit integer or float grayscale (`I;16`, `I`, `F`, uint16 arrays): linearly windowed from the
        image's own min..max to 0..255 (a DICOM-derived PNG rarely uses the full 16-bit range);
      - RGBA / LA: the alpha channel is composited onto black (the background of a radiograph);
      - palette, CMYK, RGB: converted to grayscale first (a radiograph has one channel), then replicated to RGB;
      - larger than 4096 px on a side: downsampled by an integer factor.
    Raises `ValueError` naming the image when it cannot be read, is empty, or is smaller than 16x16 px.
    """
    label = name or (os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__)
    try:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        elif not isinstance(image, Image.Image):
            raise ValueError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {label}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, TypeError) as err:
        raise ValueError(f"cannot read image {label}: {err}") from None
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {label} is {width}x{height} px; a radiograph must be at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px")
    factor = -(-max(width, height) // MAX_IMAGE_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    return _to_gray(image, label).convert("RGB")


def load_anatomy_mask(mask, name: str | None = None) -> Image.Image:
    """Open a lung + heart mask (path, PIL image or array; white or 1 inside, black or 0 outside) as an RGB image
    the image processor can resize like its radiograph. A 0/1 array or an image whose maximum is 1 is scaled to
    0/255; 16-bit and float masks are windowed like radiographs (`load_radiograph`)."""
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    image = load_radiograph(mask, name)
    if image.getextrema()[0][1] == 1:  # a 0/1 label image
        image = image.point(lambda v: 255 if v else 0)
    return image


def _to_gray(image: Image.Image, label: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if not np.isfinite([low, high]).all():
            raise ValueError(f"image {label} holds non-finite pixel values")
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if image.mode == "1":
        return image.convert("L")
    return ImageOps.grayscale(image) if image.mode != "L" else image


# -- multi-view by stitching (`multiview="stitch"`, RRG24's input) ------------------------------------------------
MULTIVIEW_MODES = ("concat", "stitch")


def encoder_input_size(image_processor) -> tuple[int, int]:
    """(height, width) of the images the encoder takes: the image processor's centre-crop size, else its resize
    size (a `shortest_edge` resize with no crop counts as a square of that side)."""
    crop = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else None
    for size in (crop, getattr(image_processor, "size", None)):
        if size is None:
            continue
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise ValueError(f"cannot tell the encoder's input size from the image processor {type(image_processor).__name__} "
                     "(no crop_size or size with height/width or shortest_edge); multiview='stitch' needs it")


def stitch_views(views: list, size: tuple[int, int]) -> Image.Image:
    """RRG24's multi-view input: a study's views (8-bit RGB PIL images, in the view rule's order) as one image.

    The rule, with `size` = (H, W) the encoder's input (`encoder_input_size`):
      1. one view: returned unchanged, so a one-view study goes through the image processor exactly as under
         `multiview="concat"` (resize, centre crop);
      2. several views: each is resized (bicubic, aspect kept, width `max(1, round(w * h / h_i))`) to the common
         height `h = min(H, smallest view height)`: no view is upsampled, and nothing taller than the encoder's
         input is ever built (the strip's memory stays bounded for 3000 px MIMIC images);
      3. the resized views are placed left to right, view 0 leftmost, with no gap: a strip `h` high and `sum(w_i)`
         wide;
      4. the strip is scaled (bicubic, aspect kept) by `min(W / strip width, H / h)` to fit the encoder's input,
         each side rounded, at least 1 px, and pasted centred (offsets floored) on a black H x W canvas: black is a
         radiograph's background, and letterboxing (as LLaVA's `pad` mode does) instead of the image processor's
         centre crop keeps every view whole; a crop of a strip two views wide would cut off the outer half of each.
    The image processor then resizes and crops that H x W canvas to itself (no change) and normalizes it.
    """
    if not views:
        raise ValueError("a study to stitch has no views")
    if len(views) == 1:
        return views[0]
    height_out, width_out = size
    strip = side_by_side(views, min(height_out, min(v.height for v in views)))
    scale = min(width_out / strip.width, height_out / strip.height)
    fitted = strip.resize((max(1, round(strip.width * scale)), max(1, round(strip.height * scale))),
                          Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (width_out, height_out))
    canvas.paste(fitted, ((width_out - fitted.width) // 2, (height_out - fitted.height) // 2))
    return canvas


def side_by_side(views: list, height: int) -> Image.Image:
    """The views placed left to right (view 0 leftmost, no gap) on an RGB strip `height` high, each resized to that
    height (bicubic, aspect kept, width `max(1, round(w * height / h))`; a view already that high is not resampled).
    The stitching rule's step 2-3, and how `s2d_align.attention` shows a study's heat maps."""
    resized = [v if v.height == height else v.resize((max(1, round(v.width * height / v.height)), height),
                                                     Image.Resampling.BICUBIC) for v in views]
    strip = Image.new("RGB", (sum(v.width for v in resized), height))
    left = 0
    for view in resized:
        strip.paste(view, (left, 0))
        left += view.width
    return strip


def default_chat_template(prompt: str, answer_marker: str, image_token: str = "<image>") -> str:
    """The chat template (Jinja) of the trained prompt, saved as `chat_template.jinja` with the processor.

    A user turn renders as the prompt with one `image_token` per `{"type": "image"}` entry (one per view) where
    `{context}` is; its text entries replace the instruction (the text after `{context}`), and a turn without text
    gets the instruction the model was trained with. `add_generation_prompt` appends the answer marker; an assistant
    turn renders as the answer marker, its text and, unless it is the last turn, the EOS token. A system turn is an
    error: the model was trained without one. So a turn of images alone renders exactly `prompt_text()`.
    """
    before, after = prompt.split("{context}", 1)
    separator = after[: len(after) - len(after.lstrip())]  # the whitespace between the placeholders and the words

    def literal(text: str) -> str:  # a JSON string is a valid Jinja string literal (quotes and newlines escaped)
        return json.dumps(text)

    return (
        "{%- for message in messages -%}\n"
        "{%- if message['content'] is string -%}"
        "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}\n"
        "{%- set texts = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}\n"
        "{%- if message['role'] == 'user' -%}\n"
        f"{{{{- {literal(before)} -}}}}"
        f"{{%- for item in items if item['type'] == 'image' -%}}{{{{- {literal(image_token)} -}}}}{{%- endfor -%}}"
        f"{{%- if texts -%}}{{{{- {literal(separator)} + texts | join(' ') -}}}}"
        f"{{%- else -%}}{{{{- {literal(after)} -}}}}{{%- endif -%}}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        f"{{{{- {literal(answer_marker)} + ' ' + texts | join(' ') -}}}}"
        "{%- if not loop.last -%}{{- eos_token -}}{%- endif -%}\n"
        "{%- else -%}\n"
        "{{- raise_exception('S2D-Align takes user and assistant turns only (it was trained without a system "
        "prompt); got role ' + message['role']) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{{{{- {literal(answer_marker)} -}}}}{{%- endif -%}}\n"
    )


class S2DAlignProcessor(ProcessorMixin):
    r"""
    Builds S2D-Align inputs: `[<image>*N; <reference>*N; <keyphrases>*N; prompt] [report]`.

    Args:
        image_processor: the image encoder's processor (Rad-DINO: `BitImageProcessor`, 518 px).
        tokenizer: the LLM tokenizer; must hold the three placeholder tokens as special tokens.
        text_encoder_tokenizer: the text encoder's tokenizer (for reference reports and key phrases).
        num_memory_queries: `N_mem`; placeholders written per modality (must equal the model's).
        max_views: the largest number of views per study; a study with more is cut to `max_views` by `VIEW_RULE`
            (frontal first, then lateral), the same rule as in data preparation, training and generation.
        prompt: the instruction; `{context}` is where the placeholders go.
        answer_marker: text that ends the prompt; generation starts right after it.
        max_report_tokens: reports longer than this (in LLM tokens) are truncated for training, and a truncated
            target gets no EOS (the model must not learn to stop mid-sentence); `report_truncation` counts them.
            The longest training target is `max_report_tokens + 1` tokens (with EOS): the generation default.
        max_context_tokens: reference / key-phrase texts are truncated to this many text-encoder tokens.
        image_tokens_per_view: `<image>` placeholders per present view for the all-patch `llava` connector (the
            model config's `image_tokens_per_view`, e.g. 1369); None (the memory-adapter connectors): the image gets
            `num_memory_queries` placeholders whatever the number of views.
        multiview: `concat` (each kept view is its own image: `pixel_values` (B, V, ...)) or `stitch` (the kept
            views of a study become one image by `stitch_views`: `pixel_values` (B, 1, ...), `view_mask` (B, 1), so
            the prompt holds one image's placeholders); must equal the model config's `multiview`.

    Call with `images` (one entry per study: an image or a list of views; paths, PIL images or arrays), optional
    `view_positions` (one list of DICOM ViewPosition strings per study, used to pick the views), optional `text`
    (the prompt, as in Llava: one string for every study or one per study, holding the `<image>` token where the
    image goes; without it, the instruction the model was trained with), optional `suffix` (the training targets, one
    report per study, as PaliGemma's processor takes them: labels with everything but the report masked, right
    padding; without it, generation inputs with left padding), optional `references` (one string per study) and
    `key_phrases` (one list of strings per study). Returns a `BatchFeature` with `input_ids`, `attention_mask`,
    (`labels`), `pixel_values` (B, V, 3, H, W), `view_mask` (B, V) and, when given, `reference_input_ids` /
    `reference_attention_mask` and `keyphrase_input_ids` / `keyphrase_attention_mask`. Optional `anatomy_masks`
    (laid out like `images`: one lung + heart mask per image) give `anatomy_masks` (B, V, H, W) in [0, 1], through the
    same view rule, stitching, resizing and cropping as their images (for `anatomical_bias: masks`).

    In a prompt, one `<image>` stands for the whole study (or one per view, as the chat template writes them): the
    model's image prefix is one block of `num_memory_queries` tokens whatever the number of views, so the processor
    expands the run of `<image>` tokens into that block (and likewise `<reference>` / `<keyphrases>` when
    `references` / `key_phrases` are given).

    Example::

        inputs = processor(images=["frontal.png"])                             # the trained prompt, for generate
        inputs = processor(images=["frontal.png"], text=processor.prompt_text())  # the same, written out
        messages = [{"role": "user", "content": [{"type": "image", "path": "frontal.png"}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)                   # the same again
        batch = processor(images=[["pa.png", "lat.png"]], suffix=["The lungs are clear."])  # training: with labels
    """

    def __init__(self, image_processor=None, tokenizer=None, text_encoder_tokenizer=None, num_memory_queries=64,
                 max_views=2, prompt=DEFAULT_PROMPT, answer_marker=DEFAULT_ANSWER_MARKER, max_report_tokens=256,
                 max_context_tokens=256, image_token="<image>", reference_token="<reference>",
                 keyphrase_token="<keyphrases>", chat_template=None, image_tokens_per_view=None, multiview="concat",
                 **kwargs):
        # extra attributes are set before super().__init__ so they round-trip through processor_config.json
        self.num_memory_queries = num_memory_queries
        self.image_tokens_per_view = image_tokens_per_view
        if multiview not in MULTIVIEW_MODES:
            raise ValueError(f"multiview must be one of {MULTIVIEW_MODES}, got {multiview!r}")
        self.multiview = multiview
        self.max_views = max_views
        self.prompt = prompt
        self.answer_marker = answer_marker
        self.max_report_tokens = max_report_tokens
        self.max_context_tokens = max_context_tokens
        self.image_token = image_token
        self.reference_token = reference_token
        self.keyphrase_token = keyphrase_token
        if "{context}" not in prompt:
            raise ValueError("the prompt must contain '{context}' where the placeholder tokens go")
        if chat_template is None:  # a saved folder passes its chat_template.jinja; a new processor derives one
            chat_template = default_chat_template(prompt, answer_marker, image_token)
        super().__init__(image_processor, tokenizer, text_encoder_tokenizer, chat_template=chat_template)
        unknown = [t for t in self.placeholder_tokens.values()
                   if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if unknown:
            raise ValueError(f"the LLM tokenizer lacks the placeholder tokens {unknown}; add them with "
                             "tokenizer.add_special_tokens({'additional_special_tokens': [...]})")

    @property
    def placeholder_tokens(self) -> dict:
        return {"image": self.image_token, "reference": self.reference_token, "keyphrases": self.keyphrase_token}

    @property
    def placeholder_token_ids(self) -> dict:
        return {k: self.tokenizer.convert_tokens_to_ids(v) for k, v in self.placeholder_tokens.items()}

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "labels", "pixel_values", "view_mask", "reference_input_ids",
                "reference_attention_mask", "keyphrase_input_ids", "keyphrase_attention_mask"]

    # -- building blocks ----------------------------------------------------------------------------------------
    def num_placeholders(self, modality: str, views: int = 1) -> int:
        """How many placeholder tokens stand for one modality in the prompt (the model's prefix length for it):
        `num_memory_queries`, or for the image under the all-patch `llava` connector `image_tokens_per_view` per
        present view."""
        if modality == "image" and self.image_tokens_per_view:
            return self.image_tokens_per_view * views
        return self.num_memory_queries

    def prompt_text(self, modalities=("image",)) -> str:
        """The trained prompt as `text` takes it: one placeholder token per context modality, the answer marker last.
        The chat template renders the same string for a user turn holding only images."""
        context = "".join(self.placeholder_tokens[m] for m in modalities)
        return self.prompt.format(context=context) + self.answer_marker

    def prompt_ids(self, modalities, views: int = 1) -> list:
        """Token ids of the trained prompt for the given context modalities (BOS first, answer marker last); `views`:
        the study's present views (it matters only under the `llava` connector)."""
        return self.encode_prompt(self.prompt_text(modalities), modalities, views=views)

    def encode_prompt(self, text: str, modalities, add_special_tokens: bool = True, views: int = 1) -> list:
        """Token ids of a prompt: the run of each modality's placeholder token is expanded to its block of
        `num_placeholders` tokens. A prompt ending with the answer marker has it tokenized on its own, as in training
        (the marker's tokens must not merge with the instruction's last word)."""
        for modality in modalities:
            token = self.placeholder_tokens[modality]
            runs = re.findall(f"(?:{re.escape(token)})+", text)
            if len(runs) != 1:
                raise ValueError(f"the prompt must hold one {token} (or one run of them) for the {modality} input; "
                                 f"it holds {len(runs)} runs: {text!r}")
            text = text.replace(runs[0], token * self.num_placeholders(modality, views), 1)
        for modality, token in self.placeholder_tokens.items():
            if modality not in modalities and token in text:
                given = {"image": "images", "reference": "references", "keyphrases": "key_phrases"}[modality]
                raise ValueError(f"the prompt holds {token} but no {given} were given: {text!r}")
        head, marker = text, []
        if self.answer_marker and text.endswith(self.answer_marker):
            head = text[: -len(self.answer_marker)]
            marker = self.tokenizer(self.answer_marker, add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(head, add_special_tokens=add_special_tokens)["input_ids"]
        for modality in modalities:  # a tokenizer that split the placeholders would silently break the model
            found, wanted = ids.count(self.placeholder_token_ids[modality]), self.num_placeholders(modality, views)
            if found != wanted:
                raise ValueError(f"the tokenizer turned {wanted} {modality} placeholders into {found} tokens; the "
                                 "placeholders must be single special tokens")
        return ids + marker

    def report_ids(self, report: str, index: int) -> list:
        """The training target of one report: its tokens, then EOS; a report longer than `max_report_tokens` is cut
        there and gets no EOS (an EOS after a cut would teach the model to stop mid-sentence)."""
        if not isinstance(report, str) or not report.strip():
            raise ValueError(f"sample {index} has no report text (got {report!r}); training needs the findings "
                             "section; leave suffix out to build generation inputs")
        ids = self.tokenizer(report.strip(), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_report_tokens:
            return ids[: self.max_report_tokens]
        return ids + [self.tokenizer.eos_token_id]

    def report_truncation(self, reports) -> dict:
        """How many of `reports` are longer than `max_report_tokens` LLM tokens (cut, no EOS, in training):
        `{"reports", "truncated", "longest_tokens", "max_report_tokens"}`."""
        texts = [r.strip() for r in _as_list(reports) if isinstance(r, str) and r.strip()]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        return {"reports": len(texts), "truncated": sum(n > self.max_report_tokens for n in lengths),
                "longest_tokens": max(lengths, default=0), "max_report_tokens": self.max_report_tokens}

    def _select_views(self, images, view_positions=None, anatomy_masks=None) -> tuple[list, list | None]:
        """Each study's views (and their masks) cut to `max_views` by the view rule, still unopened."""
        studies = _studies(images)
        masks = _studies(anatomy_masks) if anatomy_masks is not None else None
        if masks is not None and [len(m) for m in masks] != [len(v) for v in studies]:
            raise ValueError(f"anatomy_masks must hold one mask per image of each study: got {[len(m) for m in masks]} "
                             f"masks for {[len(v) for v in studies]} images")
        if view_positions is not None and len(view_positions) != len(studies):
            raise ValueError(f"got {len(view_positions)} view-position lists for {len(studies)} studies")
        for index, views in enumerate(studies):
            if not views:
                raise ValueError(f"study {index} has no images")
            positions = view_positions[index] if view_positions is not None else None
            keep = select_views(views, positions, self.max_views)
            if len(keep) < len(views):
                # never an error: a MIMIC-CXR study may hold 4 images for a 2-view model
                logger.warning_once(f"studies with more than max_views={self.max_views} images are cut to "
                                    f"{self.max_views} views: {VIEW_RULE}")
            studies[index] = [views[i] for i in keep]
            if masks is not None:
                masks[index] = [masks[index][i] for i in keep]
                for image, mask in zip(studies[index], masks[index]):
                    if _stored_size(image) != _stored_size(mask):
                        raise ValueError("an anatomy mask is {}x{} px but its image is {}x{} px; a mask must match its "
                                         "image".format(*_stored_size(mask), *_stored_size(image)))
        return studies, masks

    def _images(self, images, view_positions=None, anatomy_masks=None) -> dict:
        studies, masks = self._select_views(images, view_positions, anatomy_masks)
        studies = [[load_radiograph(v) for v in views] for views in studies]
        if self.multiview == "stitch":  # one image per study: the model sees one view
            size = encoder_input_size(self.image_processor)
            studies = [[stitch_views(views, size)] for views in studies]
        flat = [image for views in studies for image in views]
        pixels = self.image_processor(flat, return_tensors="pt")["pixel_values"]
        view_mask = _view_mask([len(v) for v in studies])
        pixel_values = pixels.new_zeros(*view_mask.shape, *pixels.shape[1:])
        pixel_values[view_mask] = pixels
        data = {"pixel_values": pixel_values, "view_mask": view_mask}
        if masks is not None:
            data["anatomy_masks"] = self._mask_values(masks, view_mask)
        return data

    def anatomy_mask_values(self, images, anatomy_masks, view_positions=None) -> torch.Tensor:
        """`anatomy_masks` (B, V, H, W) alone, as `__call__` makes them, without decoding the images (only their
        stored sizes are read): for batches whose image features come from the feature cache."""
        studies, masks = self._select_views(images, view_positions, anatomy_masks)
        views = [1 if self.multiview == "stitch" else len(v) for v in studies]
        return self._mask_values(masks, _view_mask(views))

    def _mask_values(self, masks: list, view_mask: torch.Tensor) -> torch.Tensor:
        """(B, V, H, W) masks in [0, 1] at the encoder's input size: each mask goes through the view rule's choice,
        stitching and the image processor exactly as its radiograph does (same resize and crop), and the
        normalisation is undone."""
        masks = [[load_anatomy_mask(m) for m in views] for views in masks]
        if self.multiview == "stitch":
            size = encoder_input_size(self.image_processor)
            masks = [[stitch_views(views, size)] for views in masks]
        values = self.image_processor([m for views in masks for m in views], return_tensors="pt")["pixel_values"][:, 0]
        if getattr(self.image_processor, "do_normalize", False):
            mean, std = self.image_processor.image_mean, self.image_processor.image_std
            mean, std = (mean[0], std[0]) if isinstance(mean, (list, tuple)) else (mean, std)
            values = values * std + mean
        if not getattr(self.image_processor, "do_rescale", True):
            values = values / 255.0
        out = values.new_zeros(*view_mask.shape, *values.shape[1:])
        out[view_mask] = values.clamp(0.0, 1.0)
        return out

    def _context_text(self, texts, prefix: str, batch: int) -> dict:
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} {prefix} texts for {batch} studies")
        encoded = self.text_encoder_tokenizer(
            # an absent reference is encoded as empty text: a stage uses its auxiliary input for every sample
            # (DeepSpeed needs every rank to run the same submodules), so the adapter sees [CLS][SEP]
            ["" if t is None else t for t in texts], padding=True, truncation=True,
            max_length=self.max_context_tokens, return_tensors="pt")
        return {f"{prefix}_input_ids": encoded["input_ids"], f"{prefix}_attention_mask": encoded["attention_mask"]}

    # -- main entry point -----------------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, references=None, key_phrases=None, suffix=None, return_tensors="pt",
                 view_positions=None, videos=None, audio=None, add_special_tokens=True, padding=True,
                 anatomy_masks=None, **kwargs) -> BatchFeature:
        """See the class docstring. `videos` / `audio` (passed as None by `apply_chat_template`) must stay None;
        `padding` is accepted for the pipeline's sake: rows are always padded to the longest one."""
        if return_tensors not in ("pt", None):
            raise ValueError("S2DAlignProcessor returns PyTorch tensors only (return_tensors='pt')")
        if videos is not None or audio is not None:
            raise ValueError("S2D-Align reads chest radiographs only: no videos or audio")
        if kwargs:
            raise TypeError(f"S2DAlignProcessor got unexpected arguments: {sorted(kwargs)}")
        if images is None and text is None and suffix is None:
            raise ValueError("give images (with, for training, the reports as suffix)")
        data, modalities = {}, []
        if anatomy_masks is not None and images is None:
            raise ValueError("anatomy_masks go with their images: one lung + heart mask per image")
        if images is not None:
            data.update(self._images(images, view_positions, anatomy_masks))
            modalities.append("image")
        batch = _batch_size(images, text, suffix, references, key_phrases)
        if references is not None:
            data.update(self._context_text(_as_list(references), "reference", batch))
            modalities.append("reference")
        if key_phrases is not None:
            phrases = [p if isinstance(p, str) else "; ".join(p) for p in _as_list(key_phrases)]
            data.update(self._context_text(phrases, "keyphrase", batch))
            modalities.append("keyphrases")
        # present views after the views rule (`select_views`): the `llava` connector writes placeholders per view
        views = data["view_mask"].sum(1).tolist() if images is not None else [1] * batch
        prompts = self._prompts(text, modalities, batch, images, add_special_tokens, views)
        if suffix is None:
            rows, labels = prompts, None
        else:
            reports = _as_list(suffix)
            if len(reports) != batch:
                raise ValueError(f"got {len(reports)} reports (suffix) for {batch} studies")
            answers = [self.report_ids(r, i) for i, r in enumerate(reports)]
            rows = [p + a for p, a in zip(prompts, answers)]
            labels = [[-100] * len(p) + a for p, a in zip(prompts, answers)]
        data.update(self.pad_sequences(rows, labels, left=suffix is None))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _prompts(self, text, modalities, batch: int, images, add_special_tokens: bool, views: list) -> list:
        """Token ids of each study's prompt: the trained one without `text`, else `text` (one for all or one each)."""
        if text is None:
            prompts = {v: self.prompt_ids(modalities, v) for v in set(views)}  # one per view count (llava)
            return [prompts[v] for v in views]
        texts = [text] * batch if isinstance(text, str) else list(text)
        if len(texts) != batch or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text is the prompt: one string, or one string per study ({batch}); got {text!r}. "
                             "The training report goes in suffix=")
        if images is not None:
            for index, prompt in enumerate(texts):
                runs = re.findall(f"(?:{re.escape(self.image_token)})+", prompt)
                count = len(runs[0]) // len(self.image_token) if len(runs) == 1 else 0
                given = len(_studies(images)[index])
                if count not in (1, views[index], given):  # one per study, or one per view as the chat template writes
                    raise ValueError(f"the prompt of study {index} must hold one {self.image_token} (or one per view, "
                                     f"{views[index]}), found {count}; text is the prompt, as in Llava (e.g. "
                                     f"processor.prompt_text()), and a training report goes in suffix=: {prompt!r}")
        return [self.encode_prompt(t, modalities, add_special_tokens, views=v) for t, v in zip(texts, views)]

    def pad_sequences(self, rows: list, labels: list | None = None, left: bool = False) -> dict:
        """Pad token-id rows (and their labels, with -100) into `input_ids` / `attention_mask` / `labels` tensors;
        right padding for training, left padding (`left=True`) for generation."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        out = {"input_ids": torch.full((len(rows), width), pad, dtype=torch.long),
               "attention_mask": torch.zeros(len(rows), width, dtype=torch.long)}
        if labels is not None:
            out["labels"] = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            out["input_ids"][i, span] = torch.tensor(row)
            out["attention_mask"][i, span] = 1
            if labels is not None:
                out["labels"][i, span] = torch.tensor(labels[i])
        return out

    def batch_decode(self, sequences, prompt_length: int | None = None, skip_special_tokens: bool = True,
                     **kwargs) -> list:
        """Decode generated reports without the prompt.

        `prompt_length` (the width of the left-padded `input_ids` given to `generate`) cuts every row there;
        without it each row is cut after the last answer marker it holds (rows without one are decoded whole).
        """
        sequences = sequences.tolist() if hasattr(sequences, "tolist") else [list(s) for s in sequences]
        marker = self.tokenizer(self.answer_marker, add_special_tokens=False)["input_ids"]
        reports = []
        for row in sequences:
            start = prompt_length if prompt_length is not None else _after_last(row, marker)
            text = self.tokenizer.decode(row[start:], skip_special_tokens=skip_special_tokens, **kwargs)
            reports.append(text.strip())
        return reports

    def decode(self, sequence, **kwargs) -> str:
        return self.batch_decode([sequence], **kwargs)[0]


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _view_mask(views: list[int]) -> torch.Tensor:
    """(B, max views) bool, True for each study's first `views[b]` slots (the layout of `pixel_values`)."""
    return torch.arange(max(views))[None] < torch.tensor(views)[:, None]


def _stored_size(image) -> tuple[int, int]:
    """(width, height) of a path (read from the file's header, not decoded), PIL image or array."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return opened.size
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {os.fspath(image)}") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {os.fspath(image)}: {err}") from None
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.size


def _studies(images) -> list:
    """`images` as one list of views per study (a bare image is a one-view study)."""
    studies = [images] if not isinstance(images, (list, tuple)) else list(images)
    return [list(s) if isinstance(s, (list, tuple)) else [s] for s in studies]


def _batch_size(images, text, suffix, references, key_phrases) -> int:
    """The number of studies: from the images, else from the first per-study list given (a lone string is one)."""
    if images is not None:
        return len(_studies(images))
    for value in (text, suffix, references, key_phrases):
        if value is not None:
            return len(_as_list(value))
    return 1


def _after_last(row: list, marker: list) -> int:
    for start in range(len(row) - len(marker), -1, -1):
        if row[start: start + len(marker)] == marker:
            return start + len(marker)
    return 0


__all__ = ["S2DAlignProcessor", "default_chat_template", "encoder_input_size", "load_radiograph", "select_views",
           "stitch_views", "view_rank", "VIEW_RULE"]
