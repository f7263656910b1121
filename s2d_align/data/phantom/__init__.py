"""The phantom benchmark: procedural chest radiographs whose content fixes the report (DESIGN section 6)."""

from .generate import assign_splits, generate_patient, generate_phantom

__all__ = ["generate_phantom", "generate_patient", "assign_splits"]
