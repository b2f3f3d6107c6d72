import json

import pytest

from serving.bundle import BundleError, load_bundle
from training.export import export_bundle, onnx_parity


@pytest.fixture(scope="module")
def bundle_dir(trained_run, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return export_bundle(trained_run, name="small", store=store)


def test_onnx_parity_on_256_test_images(bundle_dir, trained_model, fmnist_small):
    model, _ = trained_model
    diff = onnx_parity(model, bundle_dir / "model.onnx", fmnist_small.test.x[:256])
    assert diff <= 1e-4
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["models"][0]["extra"]["parity_max_abs_diff"] <= 1e-4


def test_onnx_batch_axis_is_dynamic(bundle_dir, fmnist_small):
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7, 33):
        out = session.run(None, {"input": fmnist_small.test.x[:n].numpy()})[0]
        assert out.shape == (n, 10)


def test_manifest_describes_the_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.name == "small" and bundle.version == "1"
    assert bundle.input.shape == (1, 28, 28) and bundle.labels[0] == "T-shirt/top"
    assert bundle.primary.role == "primary" and len(bundle.primary.sha256) == 64


def test_tampered_file_is_refused_naming_it(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"model.onnx: SHA-256 .* does not match"):
        load_bundle(copy)


def test_versions_are_never_overwritten(trained_run, bundle_dir):
    store = bundle_dir.parent.parent
    second = export_bundle(trained_run, name="small", store=store)
    assert second.name == "2"
    with pytest.raises(BundleError, match="never overwritten"):
        export_bundle(trained_run, name="small", store=store, version="1")
