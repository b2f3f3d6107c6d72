import json

import torch

from training.checkpoint import load_model
from training.models import create_model, model_spec_for
from training.trainer import TrainConfig, fit


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, fmnist_small):
    small = fmnist_small.__class__(train=fmnist_small.train.take(512), val=fmnist_small.val.take(128),
                                   test=fmnist_small.test.take(128), labels=fmnist_small.labels,
                                   name=fmnist_small.name)
    spec = model_spec_for("mnist-shallow", small)
    config = TrainConfig(epochs=2, batch_size=64, schedule="constant", lr=1e-3)

    torch.manual_seed(0)
    straight = create_model(spec)
    fit(straight, spec, small, config, tmp_path / "straight")

    torch.manual_seed(0)
    first = create_model(spec)
    fit(first, spec, small, TrainConfig(epochs=1, batch_size=64, schedule="constant", lr=1e-3),
        tmp_path / "resumed")
    resumed = create_model(spec)
    metrics = fit(resumed, spec, small, config, tmp_path / "resumed", resume=True)

    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    saved = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert saved["train"]["epochs"] == 2
    loaded, loaded_spec = load_model(tmp_path / "resumed")
    assert loaded_spec == spec
