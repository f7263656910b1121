"""DeepSpeed ZeRO-2 and ZeRO-3 on DeepSpeed's CPU accelerator (one process), through `train_sft.py`.

Each run is a subprocess (the DeepSpeed process group must not leak into other tests) that trains the curriculum
`s1,s2` (a full-model save and a LoRA merge, two DeepSpeed engines in one process) and is compared with the same
curriculum without DeepSpeed: same losses at every step, same final weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open

from modeling_s2d import STAGE_TRAINABLE
from test_training_support import CPU_ARGS, load_state, losses, make_dataset, make_model, one_thread  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op (about 100 s on a fresh machine) that a
# single process never uses; the wrapper skips it and then runs the script as `python train_sft.py ...` would.
# (`import deepspeed.comm.torch as m` would bind torch itself: deepspeed.comm re-exports the name `torch`.)
LAUNCH = ("import sys, runpy, importlib; importlib.import_module('deepspeed.comm.torch').build_shm_op = lambda: None; "
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    config = {"model_name_or_path": str(make_model(root / "m0")), "dataset_path": str(make_dataset(root)),
              "curriculum": "s1,s2", "max_steps": 3, "learning_rate": 1e-2, "warmup_steps": 0,
              "lora_dropout": 0.0,  # with dropout, two ranks would draw other masks than one process
              **{k: v for k, v in CPU_ARGS.items() if k != "seed"}, "seed": 0,
              # as on a real run: activation checkpointing on in every stage (stage 1 non-reentrant, no PEFT; stage 2
              # with PEFT, where TRL picks), and Trainer checkpoints written under DeepSpeed
              "activation_checkpointing": True, "save_strategy": "steps", "save_steps": 2}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return SimpleNamespace(root=root, config=path)


@pytest.fixture(scope="module")
def baseline(work):
    import train_sft

    train_sft.main(["--config", str(work.config), "--output_dir", str(work.root / "plain")])
    return work.root / "plain"


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_matches_plain_training(work, baseline, zero):
    out = work.root / zero
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "DS_ACCELERATOR": "cpu", "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", LAUNCH, str(REPO / "train_sft.py"), "--config", str(work.config),
               "--output_dir", str(out), "--deepspeed", str(REPO / "ds_configs" / f"{zero}.json")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "shm_comm_op built" not in result.stdout

    # one cache for every run and stage, also after a ZeRO-3 save (it names some tensors differently on disk)
    cache = Path(yaml.safe_load(work.config.read_text())["dataset_path"]) / "feature_cache"
    assert len(list(cache.iterdir())) == 1
    for stage in ("s1", "s2"):
        mine = losses(json.loads((out / stage / "log_history.json").read_text()))
        plain = losses(json.loads((baseline / stage / "log_history.json").read_text()))
        assert len(mine) == 3
        assert mine[0] == pytest.approx(plain[0], rel=1e-6), f"{zero} {stage} first-step loss"
        assert mine == pytest.approx(plain, rel=1e-4), f"{zero} {stage} losses"
        config = json.loads((out / stage / "training_args.json").read_text())
        assert config["deepspeed"].endswith(f"{zero}.json")
        summary = json.loads((out / stage / "s2d_stage.json").read_text())  # it really ran under DeepSpeed
        assert summary["distributed_type"] == "DistributedType.DEEPSPEED" and summary["zero_stage"] == int(zero[-1])
        assert config["activation_checkpointing"] is True
    # the stage-1 DeepSpeed checkpoint, beside the stage folder, holds no frozen tensor (exclude_frozen_parameters)
    checkpoint = out / "s1-checkpoints" / "checkpoint-2"
    (states,) = checkpoint.glob("global_step2/*mp_rank_00_model_states.pt")
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    assert module and all(any(g in k for g in STAGE_TRAINABLE[1]) for k in module), sorted(module)[:5]
    assert not (checkpoint / "model.safetensors").exists() and not (out / "s1" / "checkpoints").exists()
    # the saved models (full-model save for s1, LoRA merge for s2) name their tensors as a plain save does, load,
    # and match the run without DeepSpeed up to float reduction order, which Adam amplifies on near-zero
    # gradients: within 5% of each tensor's own update
    for stage, start in (("s1", work.root / "m0"), ("s2", baseline / "s1")):
        with safe_open(out / stage / "model.safetensors", "pt") as mine, \
                safe_open(baseline / stage / "model.safetensors", "pt") as plain:
            assert set(mine.keys()) == set(plain.keys())
        mine, plain, before = load_state(out / stage), load_state(baseline / stage), load_state(start)
        assert set(mine) == set(plain) == set(before)
        moved = 0
        for key, value in plain.items():
            update = (value - before[key]).abs().max().item()
            moved += update > 0
            assert (mine[key] - value).abs().max().item() <= 0.05 * update + 1e-7, f"{zero} {stage} {key}"
        assert moved > 0
    if zero == "zero3":
        _resume_stage1_from_step2(work, out, env, command)


def _resume_stage1_from_step2(work, out, env, command):
    """Stage 1 resumed under ZeRO-3 from its step-2 checkpoint (no frozen tensors in it) ends with the weights of
    the uninterrupted run."""
    resumed = work.root / "zero3-resumed" / "s1"
    shutil.copytree(out / "s1-checkpoints" / "checkpoint-2", resumed.with_name("s1-checkpoints") / "checkpoint-2")
    config = {**yaml.safe_load(work.config.read_text()), "stage": "1", "resume": True, "output_dir": str(resumed)}
    config.pop("curriculum")
    path = work.root / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    at = command.index("--config")
    result = subprocess.run([*command[:at], "--config", str(path), "--deepspeed", command[-1]], cwd=REPO,
                            env={**env, "MASTER_PORT": str(_free_port())}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((resumed / "s2d_stage.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 3
    assert len(losses(json.loads((resumed / "log_history.json").read_text()))) == 3  # 2 from the state, 1 new
    whole, again = load_state(out / "s1"), load_state(resumed)
    different = [k for k in whole if not torch.equal(whole[k], again[k])]
    assert not different, different[:5]


def test_two_processes_zero3_with_the_shipped_accelerate_config(work, baseline, tmp_path):
    """`accelerate launch` with accelerate_configs/multi_gpu.yaml switched to ZeRO-3, two processes: each computes
    its share of the feature-cache shards, the ZeRO-3 save gathers across ranks, rank 0 merges. Two ranks of 4
    samples are the baseline's full batch of 8, so the trained weights must match it."""
    config = yaml.safe_load((REPO / "accelerate_configs" / "multi_gpu.yaml").read_text())
    config["deepspeed_config"].update(deepspeed_config_file=str(REPO / "ds_configs" / "zero3.json"),
                                      zero3_init_flag=True)
    config.update(num_processes=2, main_process_port=_free_port())
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text(yaml.safe_dump(config))
    wrapper = tmp_path / "launch.py"
    wrapper.write_text(LAUNCH.replace("; ", "\n"))
    out = work.root / "two"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               str(wrapper), str(REPO / "train_sft.py"), "--config", str(work.config), "--output_dir", str(out),
               "--per_device_train_batch_size", "4", "--cache_shard_size", "2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert re.search(r"feature cache \(process 1\): 100%.* 2/2", result.stderr)  # 4 train shards, 2 per process
    for stage, start in (("s1", work.root / "m0"), ("s2", baseline / "s1")):
        summary = json.loads((out / stage / "s2d_stage.json").read_text())
        assert summary["num_processes"] == 2 and summary["zero_stage"] == 3
        mine, plain, before = load_state(out / stage), load_state(baseline / stage), load_state(start)
        for key, value in plain.items():
            update = (value - before[key]).abs().max().item()
            assert (mine[key] - value).abs().max().item() <= 0.05 * update + 1e-7, f"{stage} {key}"
