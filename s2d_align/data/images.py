"""Image paths: resolve against a user-given root, check they exist and open, apply the user's policy.

Neither IU X-Ray nor MIMIC-CXR images ship with s2d-align, so the image root always comes from the
user. Policies for a missing or unreadable image: "error" (raise, naming the file and the sample),
"skip" (drop the sample, count it in the summary).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .summary import SkipLog

POLICIES = ("error", "skip")
MISSING, UNREADABLE = "missing image", "unreadable image"


def require_image_root(image_root, dataset: str, hint: str) -> Path:
    """The resolved image root, or a clear error saying the images are not shipped."""
    if image_root is None:
        raise ValueError(f"{dataset} images are not shipped with s2d-align; pass --image-root DIR ({hint})")
    root = Path(image_root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} image root not found: {root} ({hint})")
    return root


def image_problem(path: str) -> str | None:
    """None if `path` opens as an image, else MISSING or UNREADABLE."""
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        return MISSING
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files; all mean "unreadable"
        return UNREADABLE
    return None


def filter_readable(rows: list[dict], policy: str, skipped: SkipLog, verify: bool = True,
                    workers: int = 8, desc: str = "checking images") -> list[dict]:
    """Rows whose every image exists (and, with `verify`, opens with PIL). Others raise or are skipped
    per `policy`. Checks run in threads: they are file-system bound."""
    if policy not in POLICIES:
        raise ValueError(f"unknown missing-image policy {policy!r}; choose one of {', '.join(POLICIES)}")
    check = image_problem if verify else (lambda p: None if Path(p).is_file() else MISSING)
    paths = sorted({p for row in rows for p in row["image_paths"]})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = dict(zip(paths, tqdm(pool.map(check, paths), total=len(paths), desc=desc,
                                        disable=len(paths) < 2000)))
    kept = []
    for row in rows:
        bad = [(p, problems[p]) for p in row["image_paths"] if problems[p]]
        if not bad:
            kept.append(row)
            continue
        path, reason = bad[0]
        if policy == "error":
            err = FileNotFoundError if reason == MISSING else ValueError
            raise err(f"{reason} {path} (sample {row['id']}); pass --missing-images skip to skip such samples")
        skipped.skip(reason, row["id"])
    return kept
