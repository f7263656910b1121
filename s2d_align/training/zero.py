"""DeepSpeed ZeRO-3 helper."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def outside_zero_init():
    """Build or load models whole even while a ZeRO-3 config is alive.

    A ZeRO-3 `SFTConfig` (or the one a previous stage of the curriculum left behind) registers itself through a weak
    reference that makes `from_pretrained` / `from_config` partition the weights with `zero.Init`; the frozen-feature
    encoders and the merged export model must be ordinary modules.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    live = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if live is not None:
            hf_deepspeed.set_hf_deepspeed_config(live)
