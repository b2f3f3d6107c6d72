"""bench/percall_cpu.py's pieces that need no server: source trees named on the command line are
checked, and the Classify rows carry one guarded and one skip_guard request (the OIP rows are
left out: this process must not import protos.inference, see conftest)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from bench import percall_cpu
from protos.advguard.v1 import guard_pb2


def test_tree_arg_accepts_a_source_tree_and_refuses_other_folders(tmp_path):
    name, folder = percall_cpu.tree_arg(f"after={percall_cpu.REPO}")
    assert (name, folder) == ("after", percall_cpu.REPO)
    with pytest.raises(argparse.ArgumentTypeError, match="serving/ and protos/"):
        percall_cpu.tree_arg(f"empty={tmp_path}")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        percall_cpu.tree_arg(str(percall_cpu.REPO))


def test_classify_rows_are_one_guarded_and_one_skip_guard_request():
    image = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    calls = percall_cpu.calls_for("fmnist-guarded", image, ["classify"], [])
    assert [(c.name, c.method) for c in calls] == [("Classify guarded", percall_cpu.CLASSIFY),
                                                   ("Classify skip_guard", percall_cpu.CLASSIFY)]
    requests = [guard_pb2.ClassifyRequest.FromString(c.message) for c in calls]
    assert [r.skip_guard for r in requests] == [False, True]
    assert requests[0].image.tensor.data == image.tobytes() and list(requests[0].image.tensor.shape) == [1, 28, 28]
