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
processor's `to_dict()` (and the processor's `multiview` when it stitches), the text-encoder tokenizer (its full
serialisation) and `max_context_tokens`, and the storage dtype. A shard's `fingerprint` hashes its rows (ids, image
paths with file size and mtime, reference text), so a changed dataset or image file recomputes that shard instead of
silently reusing it.

Under `accelerate launch` every process computes the missing shards `i` with `i % num_processes == process_index`,
then all processes wait at a barrier and read every shard.

Before writing, the size of the missing shards is estimated (`estimate_cache_bytes`: images x patch tokens x width x
dtype bytes, plus the reference tokens x text width x dtype bytes) and checked against the free disk
(`shutil.disk_usage`); when it does not fit, training stops with one line giving both numbers and the flag for live
encoding. What the cache costs and buys: Rad-DINO at 518 px stores 1,369 x 768 patch features per image, 2.1 MB in
float16 (MIMIC-CXR's training split: ~570 GB); at 7B the frozen encoder is ~0.3 TFLOP per image against 2.6 to 4.3
TFLOP for the LLM per sample, so the cache saves a few percent of the compute, and mostly JPEG decoding, which
dataloader workers also hide. At demo size the encoder is a large share of a step and the cache is small.
`list_caches` / `remove_caches` (`s2d cache list|clean DATASET`) show and delete caches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
        # stitched studies are other pixels; the key only gains the entry when stitching, so that the caches of
        # per-view (`concat`) models computed before the option existed stay valid
        **({"multiview": processor.multiview} if processor.multiview != "concat" else {}),
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


class _Batches(torch.utils.data.Dataset):
    """The precompute's batches (processor outputs), so that DataLoader workers decode the images."""

    def __init__(self, jobs: list[dict], processor, with_references: bool, batch_size: int):
        self.items = [(j, rows[start: start + batch_size]) for j, rows in enumerate(job["rows"] for job in jobs)
                      for start in range(0, len(rows), batch_size)]
        self.processor, self.with_references = processor, with_references

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        job, chunk = self.items[index]
        refs = [r.get("reference") or "" for r in chunk] if self.with_references else None
        views = [r.get("view_positions") for r in chunk]  # the one view rule cuts studies beyond max_views
        return job, [r["id"] for r in chunk], dict(self.processor(images=[list(r["image_paths"]) for r in chunk],
                                                                   references=refs, view_positions=views))


@torch.no_grad()
def _encode_batch(encoders: S2DAlignModel, ids: list[str], batch: dict, with_references: bool,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    device = encoders.vision_tower.device
    tensors = {}
    view_mask = batch["view_mask"].to(device)
    images = encoders.encode_images(batch["pixel_values"].to(device), view_mask)
    for i, sample_id in enumerate(ids):
        tensors[f"image/{sample_id}"] = images[i, : int(view_mask[i].sum())].to(dtype).cpu().contiguous()
    if with_references:
        mask = batch["reference_attention_mask"].to(device)
        features = encoders.encode_text(batch["reference_input_ids"].to(device), mask)
        for i, sample_id in enumerate(ids):
            tensors[f"reference/{sample_id}"] = features[i, mask[i].bool()].to(dtype).cpu().contiguous()
    return tensors


def _compute_shards(encoders, processor, jobs: list[dict], with_references: bool, dtype: torch.dtype,
                    batch_size: int, num_workers: int, root: Path, process_index: int) -> None:
    """Encode the rows of `jobs` and write each job's shard as soon as its last batch is done."""
    loader = torch.utils.data.DataLoader(_Batches(jobs, processor, with_references, batch_size), batch_size=None,
                                         num_workers=num_workers)
    pending = [len(range(0, len(job["rows"]), batch_size)) for job in jobs]
    tensors = [{} for _ in jobs]
    for job, ids, batch in tqdm(loader, desc=f"feature cache (process {process_index})", unit="batch"):
        tensors[job].update(_encode_batch(encoders, ids, batch, with_references, dtype))
        pending[job] -= 1
        if pending[job] == 0:
            path = jobs[job]["path"]
            tmp = path.with_name(path.name + f".tmp{process_index}")
            save_file(tensors[job], tmp, metadata={"key": root.name, "fingerprint": jobs[job]["fingerprint"],
                                                   "format": FORMAT_VERSION})
            os.replace(tmp, path)  # atomic: a killed run never leaves a half-written shard under the real name
            tensors[job] = None


# -- size ----------------------------------------------------------------------------------------------------------
def estimate_cache_bytes(num_images: int, patch_tokens: int, image_width: int, dtype: str = "float16",
                         reference_tokens: int = 0, text_width: int = 0) -> int:
    """Bytes of the cached features (tensor data; safetensors' headers add about 100 bytes per tensor):
    images x patch tokens x width x dtype bytes + reference tokens x text width x dtype bytes."""
    itemsize = DTYPES[dtype].itemsize
    return num_images * patch_tokens * image_width * itemsize + reference_tokens * text_width * itemsize


def _patch_tokens(encoders: S2DAlignModel, processor) -> int:
    """Patch tokens per image, as the processor sizes images for this encoder (CLS dropped, as `encode_images`
    does): (side / patch size)^2 for a ViT. Read off one blank image, so no config arithmetic can disagree."""
    from PIL import Image

    pixels = processor.image_processor([Image.new("RGB", (64, 64))], return_tensors="pt")["pixel_values"]
    patch = encoders.config.vision_config.patch_size
    return (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)


def _jobs_bytes(jobs: list[dict], encoders, processor, with_references: bool, dtype: str) -> int:
    rows = [r for job in jobs for r in job["rows"]]
    per_study = 1 if processor.multiview == "stitch" else encoders.config.max_views  # a stitched study is one image
    views = sum(min(len(r["image_paths"]), per_study) for r in rows)
    tokens = 0
    if with_references:
        texts = [r.get("reference") or "" for r in rows]
        for start in range(0, len(texts), 4096):  # the exact token counts, as the processor truncates them
            encoded = processor.text_encoder_tokenizer(texts[start: start + 4096], truncation=True,
                                                       max_length=processor.max_context_tokens)
            tokens += sum(len(ids) for ids in encoded["input_ids"])
    return estimate_cache_bytes(views, _patch_tokens(encoders, processor), encoders.config.vision_config.hidden_size,
                                dtype, tokens, encoders.config.text_encoder_config.hidden_size)


class CacheDoesNotFit(RuntimeError):
    """The feature cache would not fit on the disk (`train_sft.py` prints it as one line)."""


def check_disk(root: Path, needed: int) -> None:
    """One line, both numbers and the way out, when `needed` bytes do not fit on `root`'s disk."""
    free = shutil.disk_usage(root).free
    if needed > free:
        raise CacheDoesNotFit(f"the feature cache needs about {needed / 1e9:.1f} GB in {root} but its disk has "
                           f"{free / 1e9:.1f} GB free; free space, or train with --no_feature_cache (live encoding, "
                           "feature_cache=False in Python)")


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
                          shard_size: int = 256, batch_size: int = 8, num_workers: int = 0,
                          cache_root=None) -> FeatureCache:
    """Compute the missing shards of every split in `splits` ({name: datasets.Dataset}) and return the cache.
    Every process must call it (they share the work, then wait for each other). `batch_size` and `num_workers`
    are the precompute's batch and image-decoding DataLoader workers. Stops (RuntimeError, one line) when the
    missing shards would not fit on the disk."""
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
    missing = [job for job in plan if not job["valid"]]
    if missing:
        # every process checks the whole missing size (they share one disk, or each its own copy of it) before any
        # writes, so all of them stop together
        check_disk(root, _jobs_bytes(missing, encoders, processor, with_references, dtype))
    # each shard has one fixed owner process (by its index, not by its place among the missing ones: processes may
    # see a shard's validity differently while its owner is writing it)
    todo = [job for i, job in enumerate(plan) if i % state.num_processes == state.process_index and not job["valid"]]
    if todo:
        encoders.vision_tower.to(state.device)
        encoders.text_encoder.to(state.device)
        _compute_shards(encoders, processor, todo, with_references, DTYPES[dtype], batch_size, num_workers, root,
                        state.process_index)
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


# -- listing and cleaning ------------------------------------------------------------------------------------------
def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_caches(dataset_path) -> list[dict]:
    """The feature caches of a dataset folder: key, size on disk, shard count, when last written, and what they were
    computed from (encoder weights digest, dtype), newest first."""
    root = Path(dataset_path) / "feature_cache"
    if not root.is_dir():
        return []
    out = []
    for folder in (p for p in root.iterdir() if p.is_dir()):
        manifest_file = folder / "manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        shards = list(folder.glob("*/shard-*.safetensors"))
        out.append({"key": folder.name, "path": str(folder), "bytes": _folder_bytes(folder), "shards": len(shards),
                    "modified": max((p.stat().st_mtime for p in shards), default=folder.stat().st_mtime),
                    "encoder_weights_sha256": manifest.get("encoder_weights_sha256"), "dtype": manifest.get("dtype")})
    return sorted(out, key=lambda c: c["modified"], reverse=True)


def remove_caches(dataset_path, keys=None, keep_model=None) -> list[dict]:
    """Delete feature caches of a dataset folder and return what was deleted: the caches named in `keys`; or, with
    `keep_model` (a model folder), every cache computed from other encoder weights than that model's; or all."""
    caches = list_caches(dataset_path)
    if keys is not None:
        unknown = set(keys) - {c["key"] for c in caches}
        if unknown:
            raise ValueError(f"{Path(dataset_path) / 'feature_cache'} has no cache {sorted(unknown)}")
        doomed = [c for c in caches if c["key"] in set(keys)]
    elif keep_model is not None:
        _, digest = load_encoders(keep_model)
        doomed = [c for c in caches if c["encoder_weights_sha256"] != digest]
    else:
        doomed = caches
    for cache in doomed:
        shutil.rmtree(cache["path"])
    return doomed
