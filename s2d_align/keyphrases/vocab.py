"""Word lists for the rule-based key-phrase extractor: severity, laterality, anatomy, descriptors."""

from __future__ import annotations

import re

# Severity words and the adverbs that carry them ("the heart is mildly enlarged" -> mild).
SEVERITY = {
    "small": "small", "moderate": "moderate", "large": "large", "mild": "mild", "severe": "severe",
    "minimal": "minimal", "trace": "trace", "tiny": "tiny", "massive": "massive", "marked": "marked",
    "extensive": "extensive", "slight": "slight", "mildly": "mild", "moderately": "moderate",
    "severely": "severe", "markedly": "marked", "minimally": "minimal", "slightly": "slight",
}

LATERALITY = {
    "right": "right", "left": "left", "bilateral": "bilateral", "bilaterally": "bilateral",
    "both": "bilateral", "right-sided": "right", "left-sided": "left",
}

# Location adjectives kept in place before the head ("right apical pneumothorax", "bibasilar opacities").
ANATOMY_ADJECTIVES = {
    "apical", "biapical", "basilar", "basal", "bibasilar", "bibasal", "perihilar", "hilar", "retrocardiac",
    "lingular", "subpleural", "upper", "lower", "middle", "mid", "lobe", "lung", "base", "apex", "midlung",
    "lateral", "posterior", "anterior", "costophrenic", "paratracheal", "mediastinal", "pleural",
}

# Descriptive words kept before the head ("focal airspace disease", "calcified granuloma").
DESCRIPTORS = {
    "focal", "patchy", "streaky", "airspace", "air", "space", "air-space", "interstitial", "nodular", "calcified",
    "linear", "platelike", "plate-like", "subsegmental", "discoid", "hiatal", "degenerative", "compression",
    "endotracheal", "nasogastric", "enteric", "feeding", "central", "venous", "picc", "dual-lumen", "pacer",
    "surgical", "sternotomy", "loculated", "chronic", "acute", "confluent", "lobar", "rounded", "ill-defined",
    "hazy", "reticular", "coarse", "diffuse", "multifocal", "scattered", "pulmonary", "vascular", "alveolar",
    "consolidative", "residual", "old", "healed", "granulomatous", "cardiac", "aortic", "thoracic", "rib",
    "dual", "lumen", "chest", "wall", "tracheostomy", "dialysis", "subclavian", "jugular", "ij", "port",
    "suspicious", "pneumonic", "segmental", "internal", "external", "compressive", "cavitary", "bony", "osseous", "vertebral", "mediport",
}

# Words that are part of a size/side expression but add nothing ("moderate-sized", "right-sided").
FILLERS = {"sized", "size", "sided"}

# An anatomical location after the head: "at the right base", "in the left lower lobe".
# IU text sometimes drops the preposition after de-identification ("XXXX opacity left lung base"): a
# side right after the head is accepted without one.
LOCATION_AFTER = re.compile(
    r"^(?:(?:\S+\s+){0,3}?(?P<prep>at|in|within|involving|of|over|overlying|projecting over|along)\s+"
    r"(?:the\s+)?(?P<side>(?:right|left|bilateral|both)\s+)?|(?P<bare_side>(?:right|left)\s+))"
    r"(?P<level>(?:upper|middle|mid|lower)\s+)?"
    r"(?P<noun>lung bases|lung base|lung apex|lung apices|bases|base|apex|apices|lobes|lobe|lingula|midlung|"
    r"mid lung|upper lungs?|lower lungs?|lungs?|hemithorax|costophrenic (?:angle|sulcus|recess|xxxx)|hilum|hila|"
    r"perihilar region|lung zones?|zones?|hemidiaphragm|thoracic spine|spine|thoracic aorta|aorta|ribs?)\b"
)

# Stop the search for a location or a trailing modifier at the next clause.
CLAUSE_BREAK = re.compile(r"[,;:]|\b(?:and|with|which|but|or|versus|vs|that|while|however)\b")

WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
