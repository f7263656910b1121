"""Frozen-encoder feature cache: image-encoder (and reference text-encoder) outputs, computed once per dataset.

The encoders never train (DESIGN section 2), so their outputs are the same in every stage and epoch. The cache stores
them next to the dataset and the collator feeds them to the model as `image_features` / `reference_features`
instead of pixels / token ids.

Layout (safetensors only):

    <dataset_path>/feature_cache/<key>/manifest.json               what the key was computed from (for humans)
    <dataset_path>/feature_cache/<key>/<split>/shard-00000.safetensors
        "image/<id>"      (V, P, d_v)  patch features of the study's V views (absent views are not stored)
        "reference/<id>"  (L, d_t)     token features of the reference report, padding dropped
        metadata: {"key", "fingerprint", "format"}

`<key>` hashes everything the features depend on: the encoder configs, a SHA-256 of the encoder weights, the image
processor's `to_dict()`, the text-encoder tokenizer (its full serialisation) and `max_context_tokens`, and the
storage dtype. A shard's `fingerprint` hashes its rows (ids, image paths with file size and mtime, reference text),
so a changed dataset or image file recomputes that shard instead of silently reusing it.

Under `accelerate launch` every process computes the missing shards `i` with `i % num_processes == process_index`,
then all processes wait at a barrier and read every shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import MODEL_MAPPING

from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignModel
from processing_s2d import VIEW_RULE

from .zero import outside_zero_init

FORMAT_VERSION = "1"
ENCODER_PREFIXES = ("model.vision_tower.", "model.text_encoder.")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# -- reading the encoders straight from the checkpoint -------------------------------------------------------------
def read_encoder_weights(model_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The frozen encoders' tensors of an S2D-Align folder, read from its safetensors files without building the LLM."""
    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    state = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(ENCODER_PREFIXES):
                    state[key] = handle.get_tensor(key)
    if not any(k.startswith(ENCODER_PREFIXES[0]) for k in state):
        raise ValueError(f"{folder} holds no image-encoder weights ({ENCODER_PREFIXES[0]}*) in {files}")
    return state


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().cpu()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_encoders(config: S2DAlignConfig, state: dict[str, torch.Tensor]) -> S2DAlignModel:
    """An `S2DAlignModel` whose encoders hold `state` (on the CPU) and whose other parts stay on the meta device
    (never allocated): `encode_images` / `encode_text` are the model's own code, so cached features are exactly what
    training computes, and the 7B LLM is never loaded for the cache."""
    with torch.device("meta"):
        model = S2DAlignModel(config)
    for attr, sub_config, prefix in (("vision_tower", config.vision_config, ENCODER_PREFIXES[0]),
                                     ("text_encoder", config.text_encoder_config, ENCODER_PREFIXES[1])):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        # transformers' own loader: it applies the checkpoint-key conversions of the encoder's architecture
        module, info = MODEL_MAPPING[type(sub_config)].from_pretrained(
            None, config=sub_config, state_dict=weights, dtype=next(iter(weights.values())).dtype,
            output_loading_info=True, **({"add_pooling_layer": False} if attr == "text_encoder" else {}))
        if info["missing_keys"]:
            raise ValueError(f"the {attr} weights in the checkpoint lack {sorted(info['missing_keys'])[:5]}")
        setattr(model, attr, module.eval())
    return model


def load_encoders(model_path) -> tuple[S2DAlignModel, str]:
    """The frozen encoders of an S2D-Align folder (see `build_encoders`) and the SHA-256 of their weights.

    The digest is taken over the loaded modules, under their own parameter names: the same encoder saved by
    different paths (a plain save, a ZeRO-3 save, legacy checkpoint names) names its tensors differently on disk."""
    config = S2DAlignConfig.from_pretrained(model_path)
    with outside_zero_init():  # a ZeRO-3 config left by a previous stage would partition them
        encoders = build_encoders(config, read_encoder_weights(model_path))
    state = {f"{attr}.{key}": value for attr in ("vision_tower", "text_encoder")
             for key, value in getattr(encoders, attr).state_dict().items()}
    return encoders, weights_digest(state)


# -- the key -------------------------------------------------------------------------------------------------------
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # runtime state that every call with padding/truncation arguments rewrites (the processor's truncation
        # length is `max_context_tokens`, in the manifest); what the tokenizer *is* stays
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}:{text}".encode()).hexdigest()


# Config entries that describe how a checkpoint was stored or loaded, not what the encoder computes (the weights'
# dtype is in the weights digest).
VOLATILE_CONFIG_KEYS = ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures")


def _encoder_config(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}


def cache_manifest(config: S2DAlignConfig, encoder_digest: str, processor, dtype: str) -> dict:
    """Everything the cached features depend on; its hash is the cache key."""
    return {
        "format": FORMAT_VERSION,
        "vision_config": _encoder_config(config.vision_config),
        "text_encoder_config": _encoder_config(config.text_encoder_config),
        "encoder_weights_sha256": encoder_digest,
        "image_processor": processor.image_processor.to_dict(),
        "text_encoder_tokenizer_sha256": _tokenizer_identity(processor.text_encoder_tokenizer),
        "max_context_tokens": processor.max_context_tokens,
        "max_views": processor.max_views, "view_rule": VIEW_RULE,  # which views of a study are encoded
        "dtype": dtype,
    }


def cache_key(manifest: dict) -> str:
    return _sha(manifest)[:16]


# -- shards --------------------------------------------------------------------------------------------------------
def _file_stamp(path: str) -> list:
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError:
        return None  # the processor raises a clear error when it tries to read it


def shard_fingerprint(rows: list[dict], with_references: bool) -> str:
    return _sha([[r["id"], r["image_paths"], [_file_stamp(p) for p in r["image_paths"]],
                  (r.get("reference") or "") if with_references else None, r.get("view_positions") or []]
                 for r in rows])


def _read_metadata(path: Path) -> dict | None:
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # a truncated or foreign file is recomputed, never trusted
        return None


@torch.no_grad()
def _compute_shard(encoders: S2DAlignModel, processor, rows: list[dict], with_references: bool, dtype: torch.dtype,
                   batch_size: int) -> dict[str, torch.Tensor]:
    device = encoders.vision_tower.device
    tensors = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        refs = [r.get("reference") or "" for r in chunk] if with_references else None
        batch = processor(images=[list(r["image_paths"]) for r in chunk], references=refs,
                          view_positions=[r.get("view_positions") for r in chunk])
        view_mask = batch["view_mask"].to(device)
        images = encoders.encode_images(batch["pixel_values"].to(device), view_mask)
        for i, row in enumerate(chunk):
            tensors[f"image/{row['id']}"] = images[i, : int(view_mask[i].sum())].to(dtype).cpu().contiguous()
        if with_references:
            mask = batch["reference_attention_mask"].to(device)
            features = encoders.encode_text(batch["reference_input_ids"].to(device), mask)
            for i, row in enumerate(chunk):
                tensors[f"reference/{row['id']}"] = features[i, mask[i].bool()].to(dtype).cpu().contiguous()
    return tensors


class FeatureCache:
    """Read access to cached features by sample id. Shards are opened lazily (memory-mapped) and at most
    `max_open` stay open, so a MIMIC-scale cache (thousands of shards) stays under the open-file limit."""

    def __init__(self, shard_of: dict[str, Path], with_references: bool, max_open: int = 64):
        self.shard_of = shard_of
        self.with_references = with_references
        self.max_open = max_open
        self._handles = OrderedDict()

    def _get(self, name: str, sample_id: str) -> torch.Tensor:
        try:
            path = self.shard_of[sample_id]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in the feature cache") from None
        if path in self._handles:
            self._handles.move_to_end(path)
        else:
            if len(self._handles) >= self.max_open:
                self._handles.popitem(last=False)
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path].get_tensor(f"{name}/{sample_id}")

    def image(self, sample_id: str) -> torch.Tensor:
        return self._get("image", sample_id)

    def reference(self, sample_id: str) -> torch.Tensor:
        if not self.with_references:
            raise ValueError("this feature cache holds no reference features (the dataset has no reference column)")
        return self._get("reference", sample_id)

    def __getstate__(self):  # dataloader workers reopen the files themselves
        return {**self.__dict__, "_handles": OrderedDict()}


def prepare_feature_cache(model_path, dataset_path, splits: dict, processor, *, dtype: str = "float16",
                          shard_size: int = 256, batch_size: int = 8, cache_root=None) -> FeatureCache:
    """Compute the missing shards of every split in `splits` ({name: datasets.Dataset}) and return the cache.
    Every process must call it (they share the work, then wait for each other)."""
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    state = PartialState()
    encoders, digest = load_encoders(model_path)
    manifest = cache_manifest(encoders.config, digest, processor, dtype)
    root = Path(cache_root) if cache_root else Path(dataset_path) / "feature_cache" / cache_key(manifest)
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    with_references = all("reference" in ds.column_names for ds in splits.values())

    plan = _plan_shards(root, splits, shard_size, with_references)
    # each shard has one fixed owner process (by its index, not by its place among the missing ones: processes may
    # see a shard's validity differently while its owner is writing it)
    todo = [job for i, job in enumerate(plan) if i % state.num_processes == state.process_index and not job["valid"]]
    if todo:
        encoders.vision_tower.to(state.device)
        encoders.text_encoder.to(state.device)
        for job in tqdm(todo, desc=f"feature cache (process {state.process_index})", unit="shard"):
            tensors = _compute_shard(encoders, processor, job["rows"], with_references, DTYPES[dtype], batch_size)
            tmp = job["path"].with_name(job["path"].name + f".tmp{state.process_index}")
            save_file(tensors, tmp, metadata={"key": root.name, "fingerprint": job["fingerprint"],
                                              "format": FORMAT_VERSION})
            os.replace(tmp, job["path"])  # atomic: a killed run never leaves a half-written shard under the real name
    del encoders
    state.wait_for_everyone()

    shard_of = {}
    for job in plan:
        if not job["valid"] and not _shard_is_valid(job["path"], job["fingerprint"]):
            raise RuntimeError(f"feature-cache shard {job['path']} is missing or stale after computing it")
        shard_of.update({r["id"]: job["path"] for r in job["rows"]})
    return FeatureCache(shard_of, with_references)


def _shard_is_valid(path: Path, fingerprint: str) -> bool:
    meta = _read_metadata(path) if path.is_file() else None
    return bool(meta) and meta.get("fingerprint") == fingerprint and meta.get("format") == FORMAT_VERSION


def _plan_shards(root: Path, splits: dict, shard_size: int, with_references: bool) -> list[dict]:
    seen, plan = {}, []
    columns = ["id", "image_paths"] + (["reference"] if with_references else [])
    for split, dataset in splits.items():
        # the view positions decide which views of a study the view rule keeps
        names = columns + (["view_positions"] if "view_positions" in dataset.column_names else [])
        rows = dataset.select_columns(names).to_list()
        for row in rows:  # the collator looks features up by id, so an id must name one sample
            if seen.setdefault(row["id"], split) != split:
                raise ValueError(f"sample id {row['id']!r} appears in splits {seen[row['id']]!r} and {split!r}; "
                                 "the feature cache needs ids unique across the splits it serves")
        if len({r["id"] for r in rows}) != len(rows):
            raise ValueError(f"split {split!r} holds duplicate sample ids; the feature cache needs unique ids")
        (root / split).mkdir(parents=True, exist_ok=True)
        for index, start in enumerate(range(0, len(rows), shard_size)):
            chunk = rows[start: start + shard_size]
            path = root / split / f"shard-{index:05d}.safetensors"
            fingerprint = shard_fingerprint(chunk, with_references)
            plan.append({"path": path, "rows": chunk, "fingerprint": fingerprint,
                         "valid": _shard_is_valid(path, fingerprint)})
    return plan
