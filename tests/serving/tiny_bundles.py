"""Tiny bundles built in a blink, without torch: a linear ONNX classifier (Flatten, MatMul, Add)
written to `<store>/<name>/<version>/` with its manifest, for tests of loading and hot reload."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SHAPE = (1, 28, 28)


def tiny_onnx(classes: int = 10, seed: int = 0) -> bytes:
    """A 1 x 28 x 28 -> `classes` logits linear model, serialized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    features = int(np.prod(SHAPE))
    weights = numpy_helper.from_array(rng.normal(0, 0.1, (features, classes)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def manifest_for(name: str, version: str, files: dict[str, bytes], labels: int = 10,
                 roles: list[tuple[str, str]] | None = None) -> dict:
    """A manifest listing `files` (name -> bytes) under `roles` ((file, role) pairs; default: the
    first file as primary)."""
    roles = roles or [(next(iter(files)), "primary")]
    return {"schema_version": 1, "name": name, "version": version, "created": "2026-01-01T00:00:00Z",
            "dataset": "tiny", "labels": [f"class{i}" for i in range(labels)],
            "input": {"shape": list(SHAPE), "dtype": "float32", "value_range": [0.0, 1.0]},
            "models": [{"file": f, "sha256": hashlib.sha256(files[f]).hexdigest(), "role": r} for f, r in roles],
            "guard": {"detectors": [], "policy": "any", "action": "flag"}}


def write_bundle(store: Path, name: str, version: str, classes: int = 10, labels: int = 10, seed: int = 0,
                 staged: bool = True) -> Path:
    """`store/name/version` with model.onnx and its manifest; staged: assembled in a hidden
    folder and renamed into place (as an exporter does), else written in place, manifest first."""
    data = tiny_onnx(classes, seed)
    manifest = json.dumps(manifest_for(name, version, {"model.onnx": data}, labels), indent=2)
    dest = Path(store) / name / version
    folder = dest.parent / f".{version}.staging" if staged else dest
    folder.mkdir(parents=True)
    if not staged:
        (folder / "manifest.json").write_text(manifest)
    (folder / "model.onnx").write_bytes(data)
    if staged:
        (folder / "manifest.json").write_text(manifest)
        folder.rename(dest)
    return dest
