"""Which views of a study a sample keeps, and the prepare summary's account of what was dropped.

The rule itself is `processing_s2d.select_views` (frontal first, then lateral, up to `max_views`): one function,
shared by `s2d prepare`, the training collator, the feature cache and generation, and shipped with the model as
remote code so a Hub user's processor applies it too.
"""

from __future__ import annotations

from collections import Counter

from configuration_s2d import S2DAlignConfig
from processing_s2d import FRONTAL_VIEWS, LATERAL_VIEWS, VIEW_RULE, select_views, view_rank

# `s2d build`'s default (the config's): a dataset prepared without --max-views / --model fits a default-built model.
DEFAULT_MAX_VIEWS = S2DAlignConfig.max_views

__all__ = ["DEFAULT_MAX_VIEWS", "FRONTAL_VIEWS", "LATERAL_VIEWS", "VIEW_RULE", "ViewLog", "select_views",
           "view_rank"]


class ViewLog:
    """Per sample id: how many images the study had and how many the sample keeps."""

    def __init__(self, max_views: int = DEFAULT_MAX_VIEWS):
        if max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {max_views}")
        self.max_views = max_views
        self.studies: dict[str, tuple[int, int]] = {}

    def pick(self, sample_id: str, paths: list, positions: list) -> tuple[list, list]:
        """The paths and positions the sample keeps, in the order the model sees them."""
        keep = select_views(paths, positions, self.max_views)
        self.studies[sample_id] = (len(paths), len(keep))
        return [paths[i] for i in keep], [positions[i] for i in keep]

    def summary(self, kept_ids) -> dict:
        """The prepare summary's `views` section, over the samples that made it into the dataset."""
        counts = [self.studies[i] for i in kept_ids if i in self.studies]
        cut = [(total, kept) for total, kept in counts if total > kept]
        return {"rule": VIEW_RULE, "max_views": self.max_views,
                "images_per_study": dict(sorted(Counter(total for total, _ in counts).items())),
                "studies_cut": len(cut), "views_dropped": sum(total - kept for total, kept in cut)}
