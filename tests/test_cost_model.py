"""bench.cost: the analytic cost model against PyTorch's FLOP counter at real size, and against hand counts."""

import json

import pytest
import torch

from bench import cost
from configuration_s2d import S2DAlignConfig

WORK = cost.Workload()


@pytest.fixture(scope="module")
def real():
    """Rad-DINO-B/14 at 518 px, CXR-BERT, Vicuna-7B: `S2DAlignConfig()` defaults, built on the meta device only."""
    return cost.cost(S2DAlignConfig(), WORK, check=False)


# Counting on the meta device takes ~15 s of CPU per stage here, so the test checks the three stages that between them
# run every counted path (ours s3: image SMA + reference + key phrases + LoRA backward; ours inference: no-grad;
# the peer's s2: the all-patch projector + LoRA); `python -m bench.cost --check` checks all seven
# (bench/results/cost_real.json).
CHECKED = [("ours", "s3"), ("ours", "inference"), ("peer", "s2")]


def _rows(result, system):
    return {r["stage"]: r for r in result["systems"][system]["stages"]}


@pytest.mark.parametrize("system,stage", CHECKED)
def test_analytic_flops_match_pytorchs_counter_within_one_percent(real, system, stage):
    config = S2DAlignConfig(connector="llava") if system == "peer" else S2DAlignConfig()
    spec = next(s for s in cost.STAGES[system] if s.name == stage)
    measured = cost.measured_flops(config, spec, WORK)
    analytic = _rows(real, system)[stage]["flops"]
    for component in cost.COMPONENTS:
        assert analytic[component] == pytest.approx(measured[component], rel=0.01, abs=1.0), component
    assert measured["llm_backward"] > 0 if spec.training else measured["llm_backward"] == 0


def test_llm_forward_is_two_flops_per_weight_and_token_plus_attention(real):
    """Independent of the per-layer formula: 2 x (LLM block + head weights) x tokens + 4 x S^2 x h x layers, with the
    weights counted from the real module tree (norms are not matrix products: left out)."""
    with torch.device("meta"):
        from modeling_s2d import S2DAlignForConditionalGeneration
        model = S2DAlignForConditionalGeneration(S2DAlignConfig())
    text = model.config.text_config
    matrices = sum(p.numel() for n, p in model.model.language_model.layers.named_parameters() if p.dim() == 2)
    for system in ("ours", "peer"):
        row = _rows(real, system)["inference"]
        tokens = row["llm_tokens"]
        expected = 2 * matrices * tokens + 4 * tokens ** 2 * text.hidden_size * text.num_hidden_layers
        assert row["flops"]["llm_forward"] == expected
        assert row["flops"]["lm_head"] == 2 * model.lm_head.weight.numel() * tokens


def test_token_counts_and_prefix_lengths(real):
    assert _rows(real, "ours")["s1"]["llm_tokens"] == WORK.prompt_tokens + 64 + WORK.report_tokens
    assert _rows(real, "ours")["s3"]["llm_tokens"] == WORK.prompt_tokens + 3 * 64 + WORK.report_tokens
    assert _rows(real, "peer")["s2"]["llm_tokens"] == WORK.prompt_tokens + 37 * 37 + WORK.report_tokens
    # KV cache: 2 (K, V) x 32 layers x 4096 x 2 bytes per token
    assert _rows(real, "peer")["inference"]["kv_cache_bytes_per_report"] == 2 * 32 * 4096 * 2 * 1494


def test_our_trainable_counts_equal_set_stage(real):
    """The cost model's trainable groups for our stages agree with `set_stage` (modeling_s2d.STAGE_TRAINABLE)."""
    for stage in cost.STAGES["ours"][:3]:
        model, _ = cost.meta_model(S2DAlignConfig(), stage, WORK)  # LoRA injected in place where the stage has it
        assert model.set_stage(int(stage.name[1])) == _rows(real, "ours")[stage.name]["parameters"]["trainable"]


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cost.load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        cost.load_config(str(bad))
    good = tmp_path / "config.json"
    good.write_text(json.dumps({"connector": "llava", "num_memory_queries": 32}))
    assert cost.load_config(str(tmp_path)).connector == "llava"


def test_gpu_benchmark_runs_each_system_as_its_own_model():
    """bench.gpu shares one LLM between the two systems by swapping the connector: what it runs for the peer must be
    exactly a `connector: llava` model with those weights (checked here on CPU at the tiny size, 518 px / patch 14)."""
    from bench import gpu
    from modeling_s2d import S2DAlignForConditionalGeneration

    systems = gpu.Systems("tiny", "cpu", torch.float32)
    systems.model.eval()
    for name in ("peer", "ours"):
        batch = gpu.training_batch(systems, name, 1, 1)
        expected_images = 37 * 37 if name == "peer" else 64
        assert int((batch["input_ids"] == systems.configs[name].image_token_id).sum()) == expected_images
        with systems.use(name) as model, torch.no_grad():
            swapped = model(**batch).logits
        assert systems.model.config.connector == "sma"  # restored after the block
        state = {k: v for k, v in systems.model.state_dict().items() if ".connector." not in k}
        state |= {f"model.connector.{k}": v for k, v in systems.connectors[name].state_dict().items()}
        alone = S2DAlignForConditionalGeneration(systems.configs[name]).eval()
        alone.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(swapped, alone(**batch).logits)
