"""Where the model looked: heat maps of the image adapter's cross-attention over the patches of each view.

The image adapter `SMA_v` lets the `N_mem` memory queries attend over the patch tokens of every view of a study
(concatenated). A map is built as follows (our choice; the paper shows no maps):
  1. the adapter's attention weights (B, heads, N_mem, V * P) are averaged over heads and queries: one distribution
     over all patches of the study (each query's softmax row sums to 1, so the mean does too);
  2. it is split per view and each view's part renormalised to sum to 1 over its own patches, so every view gets a
     map that reads the same whatever the number of views (the view's share of the total is kept as `share`);
  3. the patch grid is upsampled bilinearly onto the region of the radiograph the encoder saw (the image
     processor's resize + centre crop mapped back to the original pixels; outside it the map is 0) and
     renormalised to sum to 1 over the image, so `zone_mass` is a fraction of the map;
  4. for display the map is scaled to its own maximum and blended over the radiograph with a colour map.
Mean over queries treats every memory slot alike; a per-query view (`reduce="none"`) is returned for analysis.
Only connectors with cross-attention from the memory queries to the patches (`sma`, `sma_unshared`) have maps.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from processing_s2d import side_by_side as stitch_strip

ATTENTION_CONNECTORS = ("sma", "sma_unshared")


def image_adapter(model):
    """The image adapter of a model (bare S2D-Align, its body, or a PEFT wrapper around either)."""
    config = model.config
    if getattr(config, "connector", None) not in ATTENTION_CONNECTORS:
        raise ValueError(f"attention maps need a connector whose memory queries attend over the patches "
                         f"({', '.join(ATTENTION_CONNECTORS)}); this model's connector is "
                         f"{getattr(config, 'connector', None)!r}")
    for name, module in model.named_modules():
        if name.endswith("connector.adapters.image") and hasattr(module, "output_attentions"):
            return module
    raise ValueError("this model has no image adapter with an attention hook (connector.adapters.image)")


@contextmanager
def _recording(adapter):
    """Switch the adapter's documented `output_attentions` hook on for the duration of the block."""
    adapter.output_attentions = True
    try:
        yield adapter
    finally:
        adapter.output_attentions = False
        adapter.last_attentions = None


@torch.inference_mode()
def patch_attention(model, pixel_values: torch.Tensor, view_mask: torch.Tensor | None = None,
                    reduce: str = "mean") -> list[list[dict]]:
    """Per study, per present view: `{"grid": (rows, cols) array summing to 1, "share": float}`.

    `pixel_values` (B, V, 3, H, W) and `view_mask` (B, V) as the processor returns them. `reduce="mean"` averages
    heads and memory queries (module docstring); `reduce="none"` keeps (heads, N_mem, rows, cols), each query's
    weights renormalised over the view.
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    adapter = image_adapter(model)
    body = model.model if hasattr(model, "lm_head") else model
    vision = model.config.vision_config
    device = next(adapter.parameters()).device
    pixel_values = pixel_values.to(device)
    batch, views = pixel_values.shape[:2]
    view_mask = (torch.ones(batch, views, dtype=torch.bool) if view_mask is None else view_mask).to(device)
    rows, cols = pixel_values.shape[-2] // vision.patch_size, pixel_values.shape[-1] // vision.patch_size
    with _recording(adapter):
        body.get_context_embeddings(pixel_values=pixel_values, view_mask=view_mask)
        weights = adapter.last_attentions.float()  # (B, heads, N_mem, V * P)
    patches = weights.shape[-1] // views
    if patches != rows * cols:
        raise ValueError(f"the encoder gave {patches} patch tokens per view, not the {rows}x{cols} grid of its "
                         "input (register tokens?): cannot place the attention on the image")
    weights = weights.reshape(batch, *weights.shape[1:3], views, rows, cols).cpu()
    studies = []
    for b in range(batch):
        maps = []
        for v in range(views):
            if not bool(view_mask[b, v]):
                continue
            part = weights[b, :, :, v]  # (heads, N_mem, rows, cols)
            share = float(part.sum((-2, -1)).mean())
            if reduce == "mean":
                grid = part.mean((0, 1))
                grid = grid / grid.sum().clamp(min=1e-12)
            else:
                grid = part / part.sum((-2, -1), keepdim=True).clamp(min=1e-12)
            maps.append({"grid": grid.numpy(), "share": share})
        studies.append(maps)
    return studies


def encoder_crop_box(width: int, height: int, image_processor) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in the original image's pixels of the region the encoder sees.

    Follows the transformers image processors of Dinov2 / Rad-DINO (`BitImageProcessor`): resize the shortest edge
    to `size["shortest_edge"]` (or to `size["height"] x size["width"]`), then centre-crop to `crop_size`.
    """
    size = dict(getattr(image_processor, "size", None) or {})
    if not getattr(image_processor, "do_resize", True):
        scale_x = scale_y = 1.0
    elif "shortest_edge" in size:
        scale_x = scale_y = size["shortest_edge"] / min(width, height)
    elif "height" in size and "width" in size:
        scale_x, scale_y = size["width"] / width, size["height"] / height
    else:
        raise ValueError(f"unsupported image processor size {size}: cannot map the patch grid onto the image")
    resized_w, resized_h = width * scale_x, height * scale_y
    crop = dict(getattr(image_processor, "crop_size", None) or {})
    if getattr(image_processor, "do_center_crop", False) and crop:
        crop_w, crop_h = min(crop["width"], resized_w), min(crop["height"], resized_h)
    else:
        crop_w, crop_h = resized_w, resized_h
    left, top = (resized_w - crop_w) / 2, (resized_h - crop_h) / 2
    return left / scale_x, top / scale_y, (left + crop_w) / scale_x, (top + crop_h) / scale_y


def upsample_to_image(grid: np.ndarray, width: int, height: int, image_processor) -> np.ndarray:
    """A patch-grid map -> an (height, width) map over the radiograph that sums to 1 (0 outside the crop)."""
    x0, y0, x1, y1 = encoder_crop_box(width, height, image_processor)
    left, top = int(round(x0)), int(round(y0))
    box_w, box_h = max(1, int(round(x1)) - left), max(1, int(round(y1)) - top)
    resized = Image.fromarray(grid.astype(np.float32), mode="F").resize((box_w, box_h), Image.BILINEAR)
    heat = np.zeros((height, width), dtype=np.float64)
    heat[top: top + box_h, left: left + box_w] = np.asarray(resized, dtype=np.float64)[: height - top, : width - left]
    heat = np.clip(heat, 0.0, None)
    total = heat.sum()
    return heat / total if total > 0 else heat


def zone_mass(heat: np.ndarray, box) -> float:
    """Fraction of a map's mass inside a pixel box [x0, y0, x1, y1) (clipped to the image)."""
    height, width = heat.shape
    x0, y0, x1, y1 = (int(round(c)) for c in box)
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    return float(heat[y0:y1, x0:x1].sum()) if x1 > x0 and y1 > y0 else 0.0


def mirror_box(box, width: int) -> list:
    """The box reflected left-right about the image's vertical midline (the same zone on the other side)."""
    x0, y0, x1, y1 = box
    return [width - x1, y0, width - x0, y1]


def overlay(image: Image.Image, heat: np.ndarray, colormap: str = "inferno", opacity: float = 0.6) -> Image.Image:
    """The radiograph (grayscale, as the model sees it) with the map blended in, stronger where the map is higher."""
    from matplotlib import colormaps

    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    scaled = heat / heat.max() if heat.max() > 0 else heat
    colour = colormaps[colormap](scaled)[..., :3]
    alpha = opacity * scaled[..., None]  # weak attention leaves the radiograph visible
    blended = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")


def study_attention_images(model, processor, studies: list, view_positions: list | None = None,
                           batch_size: int = 8) -> list[dict]:
    """Per study: `{"views": [PIL overlays], "heat": [(H, W) maps], "share": [...]}`, views in the model's order.

    `studies` as for `generate_reports` (an image or a list of views per study); views are picked and loaded by
    the processor's own rules (`select_views`, `load_radiograph`), so the maps sit on the images the model read.
    """
    from processing_s2d import load_radiograph, select_views

    results = []
    for start in range(0, len(studies), batch_size):
        chunk = [s if isinstance(s, (list, tuple)) else [s] for s in studies[start: start + batch_size]]
        positions = view_positions[start: start + batch_size] if view_positions is not None else [None] * len(chunk)
        picked = [[views[i] for i in select_views(views, pos, processor.max_views)]
                  for views, pos in zip(chunk, positions)]
        loaded = [[load_radiograph(v) for v in views] for views in picked]
        inputs = processor.image_processor([im for views in loaded for im in views], return_tensors="pt")
        pixels = _stack_views(inputs["pixel_values"], [len(v) for v in loaded])
        maps = patch_attention(model, *pixels)
        for views, study_maps in zip(loaded, maps):
            heats = [upsample_to_image(m["grid"], im.width, im.height, processor.image_processor)
                     for im, m in zip(views, study_maps)]
            results.append({"views": [overlay(im, h) for im, h in zip(views, heats)], "heat": heats,
                            "share": [m["share"] for m in study_maps]})
    return results


def _stack_views(pixels: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-image pixels -> (B, V, 3, H, W) and the (B, V) view mask (as the processor lays them out)."""
    most = max(counts)
    stacked = pixels.new_zeros(len(counts), most, *pixels.shape[1:])
    mask = torch.zeros(len(counts), most, dtype=torch.bool)
    start = 0
    for index, count in enumerate(counts):
        stacked[index, :count] = pixels[start: start + count]
        mask[index, :count] = True
        start += count
    return stacked, mask


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """The views of one study in one image, left to right, scaled to the first view's height."""
    return stitch_strip(images, images[0].height)


def safe_name(study_id) -> str:
    """A file name for a study id (ids may hold path separators, e.g. MIMIC's p10/p10000032/s5041...)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(study_id)).strip("._") or "study"


def write_attention_maps(out_dir: str | Path, ids: list, results: list[dict]) -> list[str]:
    """One PNG per study, `<id>.png` (its views side by side); returns the paths in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for study_id, result in zip(ids, results):
        path = out_dir / f"{safe_name(study_id)}.png"
        side_by_side(result["views"]).save(path)
        paths.append(str(path))
    return paths


def opacity_zone_masses(model, processor, images: list, boxes: list, batch_size: int = 32) -> dict:
    """The grounding check of the phantom set: for images with one focal opacity each (its pixel box), the map's
    mass inside the opacity's box and inside the mirror box on the other side (`mirror_box`).

    Returns `{"inside": [...], "mirror": [...], "mean_inside", "mean_mirror", "inside_larger": count, "studies"}`.
    A map that ignores the image puts about the same mass in both (the phantom thorax is nearly symmetric).
    """
    results = study_attention_images(model, processor, images, batch_size=batch_size)
    inside, mirror = [], []
    for result, box in zip(results, boxes):
        heat = result["heat"][0]  # one frontal view per phantom study
        inside.append(zone_mass(heat, box))
        mirror.append(zone_mass(heat, mirror_box(box, heat.shape[1])))
    return {"studies": len(inside), "mean_inside": float(np.mean(inside)), "mean_mirror": float(np.mean(mirror)),
            "inside_larger": int(sum(a > b for a, b in zip(inside, mirror))), "inside": inside, "mirror": mirror}


__all__ = ["image_adapter", "patch_attention", "study_attention_images", "opacity_zone_masses", "upsample_to_image",
           "encoder_crop_box", "zone_mass", "mirror_box", "overlay", "write_attention_maps", "side_by_side"]
