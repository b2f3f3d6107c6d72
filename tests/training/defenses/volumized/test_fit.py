"""`volumized` end to end on a small subset: trains with PAL + syllabus, reloads, exports."""
import json

import pytest
import torch

from training.checkpoint import load_model
from training.defenses.volumized.model import VolumetricNet

pytestmark = pytest.mark.slow


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def volumized_run(train_volumized):
    return train_volumized("volumized", {"metric": "mi", "syllabus_metric": "entropy", "pacing": "linear"},
                           sizes=(1000, 200, 200), epochs=2, batch_size=32)


def test_volumized_model_learns_the_task(volumized_run):
    _, out, metrics = volumized_run
    # 62 steps on 1,000 images: far from converged, but well above chance (10%)
    assert metrics["test_accuracy"] > 0.3, metrics
    assert metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert json.loads((out / "metrics.json").read_text())["parameters"] == metrics["parameters"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["defense_config"]["metric"] == "mi" and config["model"]["name"] == "volumetric"


def test_checkpoint_rebuilds_the_3d_model_and_onnx_matches(volumized_run, tmp_path):
    from training.export.onnx_export import export_onnx, onnx_parity

    splits, out, metrics = volumized_run
    model, spec = load_model(out)
    assert isinstance(model, VolumetricNet) and spec.options["volumizer"]["metric"] == "mi"
    with torch.no_grad():
        acc = (model(splits.test.x).argmax(1) == splits.test.y).float().mean().item()
    assert acc == pytest.approx(metrics["test_accuracy"])
    # the volumizer is inside the graph: the ONNX model takes plain images
    path = export_onnx(model, tmp_path / "volumized.onnx", (1, 28, 28))
    images = torch.cat([splits.test.x, torch.rand(56, 1, 28, 28)])
    assert onnx_parity(model, path, images) < 1e-4
