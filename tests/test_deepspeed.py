"""DeepSpeed ZeRO-2 and ZeRO-3 on DeepSpeed's CPU accelerator (one process), through `train_sft.py`.

Each run is a subprocess (the DeepSpeed process group must not leak into other tests) that trains the curriculum
`s1,s2` (a full-model save and a LoRA merge, two DeepSpeed engines in one process) and is compared with the same
curriculum without DeepSpeed: same losses at every step, same final weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from test_training_support import CPU_ARGS, load_state, losses, make_dataset, make_model, one_thread  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op (about 100 s on a fresh machine) that a
# single process never uses; the wrapper skips it and then runs the script as `python train_sft.py ...` would.
LAUNCH = ("import sys, runpy, deepspeed.comm.torch as comm; comm.build_shm_op = lambda: None; "
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
              **{k: v for k, v in CPU_ARGS.items() if k != "seed"}, "seed": 0}
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
    assert "DeepSpeed" in result.stderr + result.stdout  # it really ran under DeepSpeed

    for stage in ("s1", "s2"):
        mine = losses(json.loads((out / stage / "log_history.json").read_text()))
        plain = losses(json.loads((baseline / stage / "log_history.json").read_text()))
        assert len(mine) == 3
        assert mine[0] == pytest.approx(plain[0], rel=1e-6), f"{zero} {stage} first-step loss"
        assert mine == pytest.approx(plain, rel=1e-4), f"{zero} {stage} losses"
        config = json.loads((out / stage / "training_args.json").read_text())
        assert config["deepspeed"].endswith(f"{zero}.json")
    # the saved models (full-model save for s1, LoRA merge for s2) load and match the run without DeepSpeed, up to
    # float reduction order, which Adam amplifies on near-zero gradients: within 5% of each tensor's own update.
    # (Compared after loading: a ZeRO-3 save may name LLM keys differently on disk, which loading maps back.)
    for stage, start in (("s1", work.root / "m0"), ("s2", baseline / "s1")):
        mine, plain, before = load_state(out / stage), load_state(baseline / stage), load_state(start)
        assert set(mine) == set(plain) == set(before)
        moved = 0
        for key, value in plain.items():
            update = (value - before[key]).abs().max().item()
            moved += update > 0
            assert (mine[key] - value).abs().max().item() <= 0.05 * update + 1e-7, f"{zero} {stage} {key}"
        assert moved > 0
