import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_model
from training.trainer import accuracy

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_pgd_at_under_torchrun_with_two_gloo_processes(tmp_path, defense_splits):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "advguard.cli.distributed",
           "--defense", "pgd-at", "--model", "mnist-shallow", "--epochs", "1", "--batch-size", "64",
           "--lr", "3e-3", "--limit-train", "512", "--limit-test", "256",
           "--option", "steps=2", "--option", "eps=0.1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model, spec = load_model(out)
    assert spec.name == "mnist-shallow"
    assert accuracy(model, defense_splits.test) > 0.2  # 8 steps of 2 x 32 images; chance is 0.1
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["ddp"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 64}
    assert config["train"]["batch_size"] == 32
    assert metrics["world_size"] == 2 and metrics["train_size"] == 512
    assert metrics["replicas_in_sync"] is True  # both ranks ended with identical weights
    assert not (out / "ranks").exists()
    assert all(not k.startswith("module.") for k in torch.load(out / "model.pt", weights_only=True)["state_dict"])
