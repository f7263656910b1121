"""The phantom benchmark: procedural chest radiographs whose content fixes the report (DESIGN section 6).

Besides the common schema, each row carries `findings` (JSON: the generator's findings state) and
`locations` (JSON list of {finding, side, bbox [x0, y0, x1, y1] in pixels}; the heart entry also gives
the drawn cardiothoracic ratio `ctr`). `labels` holds the 14 CheXpert labels the rule labeler reads
from the report; `key_phrases` are the ground-truth phrases of the findings.
"""

from .generate import assign_splits, generate_patient, generate_phantom

__all__ = ["generate_phantom", "generate_patient", "assign_splits"]
