"""Issue 17's variants train through the defence, reload, and export to ONNX with the
volumizer (fixed, robust) and the aggregation (vote, trimmed mean) inside the graph."""
import json

import pytest
import torch

import training.defenses  # noqa: F401  (registers 'volumetric')
from training.checkpoint import load_model
from training.defenses.volumized.ordering import fixed_order_from
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig
from training.export.onnx_export import export_onnx, onnx_parity
from training.models import ModelSpec, create_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def slices_run(train_volumized):
    options = {"ranking": "fixed", "order_images": "300", "depth_kernel": "1", "position": "true",
               "aggregation": "vote", "occlusion": "0.5", "pacing": "none"}
    return train_volumized("variant", options, sizes=(400, 100, 100), epochs=1, batch_size=50)


def test_fixed_order_from_the_training_images_is_recorded_and_reloaded(slices_run):
    splits, out, _ = slices_run
    config = json.loads((out / "config.json").read_text())
    recorded = config["model"]["options"]["volumizer"]["fixed_order"]
    assert tuple(recorded) == fixed_order_from(splits.train.x[:300], Volumizer(VolumizerConfig(7, 7, "mi")))
    model, spec = load_model(out)
    assert model.volumizer.config.fixed_order == tuple(recorded)
    assert model.slices_independent and model.aggregation == "vote" and model.position is not None


def test_the_trained_slice_vote_exports_with_parity(slices_run, tmp_path):
    splits, out, metrics = slices_run
    model, _ = load_model(out)
    with torch.no_grad():
        acc = (model(splits.test.x).argmax(1) == splits.test.y).float().mean().item()
    assert acc == pytest.approx(metrics["test_accuracy"])  # the reloaded weights are the trained ones
    path = export_onnx(model, tmp_path / "slices.onnx", (1, 28, 28))
    images = torch.cat([splits.test.x, torch.rand(28, 1, 28, 28)])
    assert onnx_parity(model, path, images) < 1e-4
    # what the server loads (no torch): the same answers as the checkpoint
    from serving.engine import OnnxModel

    served = OnnxModel.load(path).logits(images.numpy())
    with torch.no_grad():
        assert (served.argmax(1) == model(images).argmax(1).numpy()).all()


def test_robust_ranking_and_trimmed_mean_export_with_parity(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = create_model(ModelSpec("volumetric", mean=(0.286,), std=(0.353,),
                                   options={"base": "fmnist-cnn", "volumizer": {"ranking": "robust"},
                                            "aggregation": "trimmed_mean", "trim": 3})).eval()
    path = export_onnx(model, tmp_path / "robust.onnx", (1, 28, 28))
    images = fmnist_small.test.x[:64]
    assert onnx_parity(model, path, images) < 1e-4
    # the graph ranks the slices itself: ONNX and PyTorch agree on images whose order differs
    assert len({tuple(o.tolist()) for o in model.volumizer.order(images)}) > 10
