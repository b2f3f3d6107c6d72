import io
import json
import os
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_model
from training.models import create_model, model_spec_for
from training.trainer import TrainConfig, fit

ONE, TWO = (TrainConfig(epochs=n, batch_size=64, schedule="constant", lr=1e-3) for n in (1, 2))


@pytest.fixture(scope="module")
def small(fmnist_small):
    """512 training, 128 validation and 128 test images of the session's Fashion-MNIST subset."""
    return fmnist_small.__class__(train=fmnist_small.train.take(512), val=fmnist_small.val.take(128),
                                  test=fmnist_small.test.take(128), labels=fmnist_small.labels,
                                  name=fmnist_small.name)


@pytest.fixture(scope="module")
def straight(small, tmp_path_factory) -> dict:
    """The state_dict of mnist-shallow after two uninterrupted epochs (seed 0)."""
    spec = model_spec_for("mnist-shallow", small)
    torch.manual_seed(0)
    model = create_model(spec)
    fit(model, spec, small, TWO, tmp_path_factory.mktemp("straight"))
    return model.state_dict()


def assert_same_weights(model: torch.nn.Module, expected: dict) -> None:
    for a, b in zip(expected.values(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, small, straight):
    spec = model_spec_for("mnist-shallow", small)
    torch.manual_seed(0)
    fit(create_model(spec), spec, small, ONE, tmp_path / "resumed")
    resumed = create_model(spec)
    metrics = fit(resumed, spec, small, TWO, tmp_path / "resumed", resume=True)

    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert_same_weights(resumed, straight)
    saved = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert saved["train"]["epochs"] == 2
    loaded, loaded_spec = load_model(tmp_path / "resumed")
    assert loaded_spec == spec


def test_a_write_cut_short_keeps_the_previous_last_pt_and_resume_still_works(tmp_path, small, straight,
                                                                              monkeypatch):
    """torch.save failing half-way through last.pt (as a kill mid-write would) leaves the previous
    last.pt whole and no temporary file; --resume from it ends with the uninterrupted weights."""
    spec = model_spec_for("mnist-shallow", small)
    torch.manual_seed(0)
    fit(create_model(spec), spec, small, ONE, tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def cut_short(obj, f, *args, **kwargs):
        whole = io.BytesIO()
        real_save(obj, whole, *args, **kwargs)
        half = whole.getvalue()[:len(whole.getvalue()) // 2]
        Path(f).write_bytes(half) if isinstance(f, (str, os.PathLike)) else f.write(half)
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="killed mid-write"):
        fit(create_model(spec), spec, small, TWO, tmp_path, resume=True)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))

    resumed = create_model(spec)
    metrics = fit(resumed, spec, small, TWO, tmp_path, resume=True)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert_same_weights(resumed, straight)
