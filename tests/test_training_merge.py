"""Merging a stage's LoRA into its input happens in float32 and rounds each merged weight once to the folder's dtype."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from test_training_support import TINY, one_thread  # noqa: F401 (autouse fixture)


def test_bf16_merge_equals_an_fp32_merge_rounded_once(tmp_path):
    from peft import PeftModel, get_peft_model

    from modeling_s2d import S2DAlignForConditionalGeneration
    from s2d_align.tiny import build_tiny
    from s2d_align.training.export import merge_adapter
    from s2d_align.training.stages import lora_config, resolve_stage

    model, _ = build_tiny(**TINY)
    base_dir = tmp_path / "base"
    model.to(torch.bfloat16).save_pretrained(base_dir)
    config = lora_config(resolve_stage(2), r=4, alpha=8, dropout=0.0)
    peft = get_peft_model(S2DAlignForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking small delta: B starts at zero in PEFT
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(1e-3 * torch.randn(param.shape, generator=generator))
    peft.save_pretrained(tmp_path / "adapter")

    merged = merge_adapter(base_dir, tmp_path / "adapter", torch.bfloat16).state_dict()
    base = load_file(base_dir / "model.safetensors")
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    scaling = 8 / 4
    # a merge in bf16: PEFT's safe merge casts the delta to the weight's dtype, then adds (PEFT 0.21's default merge
    # adds the float32 delta with one rounding, as we do, but that is an implementation detail of it)
    old = PeftModel.from_pretrained(S2DAlignForConditionalGeneration.from_pretrained(base_dir, dtype=torch.bfloat16),
                                    str(tmp_path / "adapter")).merge_and_unload(safe_merge=True).state_dict()
    checked, old_differs = 0, 0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        # the reference: exact float32 sum, one rounding to bf16 (computed from the files, not by PEFT)
        reference = (base[target].float() + (b.float() @ a.float()) * scaling).to(torch.bfloat16)
        assert merged[target].dtype == torch.bfloat16
        assert torch.equal(merged[target], reference), target
        old_differs += int((old[target] != reference).sum())
        checked += 1
    assert checked == 2 * 7  # 2 LLM layers x 7 linear layers
    # the bf16 merge rounds twice: some weights come out one bf16 step off
    assert old_differs > 0
