"""The small `mia` run that the resume, helper and evaluation tests share: its options, data and
schedule, a script that runs it in a subprocess, and a way to kill that subprocess mid-stage."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.data import DataConfig
from training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[4]
OPTIONS = {"attacks": "gma:values=0.1|1.0;exponents=1,pgd:eps=0.1;steps=2;alpha=0.05,fgsm:eps=0.1,cw",
           "cw_steps": "5", "cw_binary_steps": "2", "gma_steps": "2", "gma_tries": "2",
           "shares": "0.25,0.5", "share": "0.5", "members": "eat1,eat2", "n_bootstraps": "2", "shard_size": "24"}
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=3e-3)
DATA = DataConfig(name="fashion-mnist", val_size=100, limit_train=240, limit_test=48)
RUN = f"""
import sys, torch
torch.set_num_threads(1)
from training.data import DataConfig, load_splits
from training.defenses import create_defense
from training.trainer import TrainConfig
data = {DATA!r}
splits = load_splits(data)
create_defense('mia', {OPTIONS!r}).fit('mia-target', splits, {CONFIG!r}, sys.argv[1], resume=True,
                                       run_config={{'data': data.__dict__}})
"""


def resumed(splits, out: Path) -> dict:
    """The run in `out` resumed in this process (the tests run on one torch thread)."""
    from training.defenses import create_defense

    return create_defense("mia", OPTIONS).fit("mia-target", splits, CONFIG, out, resume=True)


def _loadable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except (RuntimeError, EOFError, OSError):
        return False


def killed_when(out: Path, pattern: str, timeout: float = 300.0) -> None:
    """Run the fit in a subprocess and SIGKILL it as soon as a whole file matching `pattern` is
    there (last.pt is written whole or not at all, `training.checkpoint.write_atomic`)."""
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    while not any(_loadable(p) for p in out.glob(pattern)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {pattern} appeared: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{pattern} did not appear within {timeout} s")
        time.sleep(0.02)  # polling the run folder: the file's appearance is the event
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
