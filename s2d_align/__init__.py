"""S2D-Align: data, key phrases, metrics, training and CLI around the top-level model files.

Importing the package registers the model with the Auto classes of this process, and marks the classes for
remote-code saving, so that `save_pretrained` writes a folder that loads with `trust_remote_code=True` in a
process that never imports this package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from configuration_s2d import S2DAlignConfig
from modeling_s2d import S2DAlignForConditionalGeneration, S2DAlignModel
from processing_s2d import S2DAlignProcessor, load_radiograph

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(S2DAlignConfig.model_type, S2DAlignConfig, exist_ok=True)
    # AutoModel resolves to the generator as well: see S2DAlignConfig's docstring
    AutoModel.register(S2DAlignConfig, S2DAlignForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(S2DAlignConfig, S2DAlignForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(S2DAlignConfig, S2DAlignProcessor, exist_ok=True)
    S2DAlignConfig.register_for_auto_class()
    S2DAlignForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    S2DAlignProcessor.register_for_auto_class()


_register()

__all__ = ["S2DAlignConfig", "S2DAlignModel", "S2DAlignForConditionalGeneration", "S2DAlignProcessor",
           "load_radiograph"]
