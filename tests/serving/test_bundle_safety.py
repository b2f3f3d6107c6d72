"""Loading a bundle never leaves its folder, never opens anything but a regular file, runs the
bytes it verified, checks an Ed25519 signature when given a trust key, and refuses a bundle
whose labels do not match its model's outputs."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from serving.bundle import BundleChecks, BundleError, load_bundle
from tests.serving.tiny_bundles import manifest_for, tiny_onnx, write_bundle

X = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)


def bundle_with(folder: Path, files: dict[str, bytes], listed: dict[str, bytes] | None = None, **extra) -> Path:
    """`folder` holding `files` and a manifest listing `listed` (name -> bytes hashed; default: files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {**manifest_for("tiny", folder.name, listed or files), **extra}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def load_in_thread(folder: Path, timeout: float = 30.0):
    """load_bundle in a daemon thread: (result or exception, finished in time)."""
    out: list = []

    def run():
        try:
            out.append(load_bundle(folder))
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return (out[0] if out else None), not thread.is_alive()


@pytest.mark.parametrize("name, reason", [("../outside.onnx", "'..'"), ("sub/../../outside.onnx", "'..'"),
                                          ("/abs/outside.onnx", "absolute path")])
def test_a_path_outside_the_folder_is_refused_naming_it(tmp_path, name, reason):
    model = tiny_onnx()
    (tmp_path / "outside.onnx").write_bytes(model)
    listed = {name.replace("/abs", str(tmp_path)): model}
    folder = bundle_with(tmp_path / "store" / "tiny" / "1", {}, listed)
    with pytest.raises(BundleError, match=reason) as caught:
        load_bundle(folder)
    assert "outside.onnx" in str(caught.value)


def test_a_symlinked_model_file_is_refused_even_with_the_right_hash(tmp_path):
    model = tiny_onnx()
    (tmp_path / "elsewhere.onnx").write_bytes(model)
    folder = bundle_with(tmp_path / "1", {}, {"model.onnx": model})
    (folder / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(BundleError, match=r"model\.onnx is a symbolic link"):
        load_bundle(folder)


def test_a_symlinked_folder_on_the_way_is_refused(tmp_path):
    model = tiny_onnx()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "model.onnx").write_bytes(model)
    folder = bundle_with(tmp_path / "1", {}, {"sub/model.onnx": model})
    (folder / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(BundleError, match="sub is a symbolic link"):
        load_bundle(folder)


def test_a_symlinked_manifest_is_refused(tmp_path):
    folder = write_bundle(tmp_path, "tiny", "1")
    (folder / "manifest.json").rename(tmp_path / "manifest.json")
    (folder / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest\.json is a symbolic link"):
        load_bundle(folder)


def test_a_fifo_named_as_a_model_file_is_refused_at_once(tmp_path):
    folder = bundle_with(tmp_path / "1", {}, {"model.onnx": tiny_onnx()})
    os.mkfifo(folder / "model.onnx")
    try:
        result, finished = load_in_thread(folder)
    finally:  # a loader blocked on the FIFO (the bug) sees end-of-file and ends
        try:
            os.close(os.open(folder / "model.onnx", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert finished, "loading hung on a FIFO"
    assert isinstance(result, BundleError) and "model.onnx is a FIFO" in str(result)


def test_a_file_over_the_size_cap_is_refused_naming_both_sizes(tmp_path):
    model = tiny_onnx()
    folder = bundle_with(tmp_path / "1", {"model.onnx": model})
    with pytest.raises(BundleError, match=rf"model\.onnx holds {len(model)} bytes, over the limit of 1000"):
        load_bundle(folder, checks=BundleChecks(max_file_bytes=1000))
    assert load_bundle(folder).primary.file == "model.onnx"  # the default cap (1 GiB) takes it


def test_the_bytes_that_were_hashed_are_the_bytes_that_run(tmp_path, monkeypatch):
    import serving.pipeline as pipeline_module
    from serving.engine import OnnxModel
    from serving.pipeline import Pipeline

    original, other = tiny_onnx(seed=0), tiny_onnx(seed=1)
    folder = bundle_with(tmp_path / "1", {"model.onnx": original})
    verified = pipeline_module.load_bundle

    def verify_then_swap(*args, **kwargs):
        bundle = verified(*args, **kwargs)
        (folder / "model.onnx").write_bytes(other)  # swapped after it was hashed
        return bundle

    monkeypatch.setattr(pipeline_module, "load_bundle", verify_then_swap)
    pipeline = Pipeline.load(folder)
    expected = OnnxModel.load("original", data=original).logits(X)
    np.testing.assert_allclose(pipeline.primary.logits(X), expected, rtol=1e-6)
    assert pipeline.bundle.blobs == {}  # the verified bytes are let go once the session holds them


def test_a_file_under_two_roles_is_loaded_once(tmp_path):
    from serving.pipeline import Pipeline

    model = tiny_onnx()
    folder = tmp_path / "1"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model)
    manifest = manifest_for("tiny", "1", {"model.onnx": model}, roles=[("model.onnx", "primary"),
                                                                       ("model.onnx", "fallback")])
    manifest["guard"]["action"] = "fallback"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pipeline = Pipeline.load(folder)
    assert pipeline.fallback is pipeline.primary
    manifest["models"][1]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="listed twice with different SHA-256s"):
        load_bundle(folder)


def test_twins_are_confined_but_never_loaded(tmp_path):
    folder = bundle_with(tmp_path / "1", {"model.onnx": tiny_onnx(), "twins/model.pt": b"not a checkpoint"},
                         {"model.onnx": tiny_onnx()},
                         twins=[{"of": "model.onnx", "file": "twins/model.pt", "sha256": "0" * 64}])
    assert load_bundle(folder).primary.file == "model.onnx"  # garbage twin: the server never reads it
    os.mkfifo(folder / "twins" / "fifo.pt")
    for file, reason in (("../model.pt", "'..'"), ("twins/fifo.pt", "is a FIFO")):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["twins"] = [{"of": "model.onnx", "file": file, "sha256": "0" * 64}]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        result, finished = load_in_thread(folder)
        assert finished and isinstance(result, BundleError) and reason in str(result), result


def test_labels_must_match_the_primary_output_size(tmp_path):
    from serving.runtime.models import load_pipeline

    folder = write_bundle(tmp_path, "tiny", "1", classes=10, labels=9)
    with pytest.raises(BundleError, match="outputs 10 classes but the manifest lists 9 labels"):
        load_pipeline(folder)


@pytest.mark.parametrize("role", ["primary", "fallback"])
def test_pipeline_load_refuses_a_model_whose_output_width_is_not_the_label_count(tmp_path, role):
    """Pipeline.load (TorchServe's handler, compose's check) refuses what the server refuses: an
    answering model with 12 outputs under 10 labels would answer class indices past the labels."""
    from serving.pipeline import Pipeline

    files = {"right.onnx": tiny_onnx(classes=10), "wrong.onnx": tiny_onnx(classes=12, seed=1)}
    for folder, primary, fallback in ((tmp_path / "ok", "right.onnx", "right.onnx"),
                                      (tmp_path / "bad", *(("wrong.onnx", "right.onnx") if role == "primary"
                                                           else ("right.onnx", "wrong.onnx")))):
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        manifest = manifest_for("tiny", "1", files, labels=10, roles=[(primary, "primary"), (fallback, "fallback")])
        manifest["guard"]["action"] = "fallback"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Pipeline.load(tmp_path / "ok").run(X).probs.shape == (len(X), 10)
    with pytest.raises(BundleError, match=rf"the {role} model \(wrong\.onnx\) outputs 12 classes but the "
                                          "manifest lists 10 labels"):
        Pipeline.load(tmp_path / "bad")


def keys() -> tuple[bytes, bytes]:
    """(private key PEM, public key PEM) of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_with_a_trust_key_only_a_validly_signed_bundle_loads(tmp_path):
    from serving.signature import sign_manifest

    private, public = keys()
    trust = BundleChecks(trust_key=public)
    folder = write_bundle(tmp_path, "tiny", "1")
    assert load_bundle(folder).name == "tiny"  # no key: signatures are not required
    with pytest.raises(BundleError, match=r"manifest\.sig is missing"):
        load_bundle(folder, checks=trust)
    sign_manifest(folder, private)
    assert load_bundle(folder, checks=trust).name == "tiny"
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "labels": list(reversed(manifest["labels"]))}))
    with pytest.raises(BundleError, match=r"manifest\.sig does not verify against the trusted key"):
        load_bundle(folder, checks=trust)
    sign_manifest(folder, keys()[0])  # another key
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(folder, checks=trust)


def test_a_trust_key_that_is_not_ed25519_is_refused():
    ec_public = generate_private_key(SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        BundleChecks(trust_key=ec_public)
    with pytest.raises(ValueError, match="not a PEM public key"):
        BundleChecks(trust_key=b"junk")


def test_serve_with_a_trust_key_refuses_an_unsigned_store_and_serves_a_signed_one(tools, tmp_path):
    from serving.signature import sign_manifest

    private, public = keys()
    (tmp_path / "trust.pem").write_bytes(public)
    folder = write_bundle(tmp_path / "store", "tiny", "1")
    with pytest.raises(RuntimeError, match=r"manifest\.sig is missing"):
        tools.start_server(tmp_path / "store", tmp_path / "refused.log", "--trust-key", str(tmp_path / "trust.pem"),
                           "--poll-seconds", "0")
    sign_manifest(folder, private)
    server = tools.start_server(tmp_path / "store", tmp_path / "server.log", "--trust-key",
                                str(tmp_path / "trust.pem"), "--poll-seconds", "0")
    code, _ = server.stop()
    assert code == 0, server.log_text()
