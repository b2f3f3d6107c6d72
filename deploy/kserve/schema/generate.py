"""Write JSON schemas for KServe's InferenceService and ServingRuntime from KServe's Python SDK.

KServe publishes its CRDs (with their OpenAPI v3 schemas) only in its Git repository; no PyPI
package carries them. The `kserve` SDK on PyPI does carry the same API as generated model classes
(`kserve/models/v1beta1_inference_service.py`, ...; OpenAPI Generator output from the CRDs' Go
types): per class `openapi_types` (attribute -> type), `attribute_map` (attribute -> JSON key), and
setters that refuse None for required fields. Kubernetes types (V1Container, V1Probe, ...) come
from the `kubernetes` client, generated the same way. This script reads those classes from the two
wheels (parsing their source, importing nothing) and writes one JSON schema (draft 2020-12) per kind:
every object closed (`additionalProperties: false`, like `kubernetes-validate --strict`), required
fields required, apiVersion and kind fixed.

    python deploy/kserve/schema/generate.py        # downloads the pinned wheels with pip

Run it again when the pins below change; tests/deploy/test_kserve.py validates the manifests in
deploy/kserve/ against the files it writes.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

KSERVE = "kserve==0.21.0"
KUBERNETES = "kubernetes==36.0.3"  # 37 switched to pydantic models without openapi_types
HERE = Path(__file__).resolve().parent
ROOTS = {  # file written -> (root class, apiVersion, kind)
    "inferenceservice-v1beta1.json": ("V1beta1InferenceService", "serving.kserve.io/v1beta1", "InferenceService"),
    "servingruntime-v1alpha1.json": ("V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1", "ServingRuntime"),
}
PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
              "bool": {"type": "boolean"}, "datetime": {"type": "string"}, "date": {"type": "string"},
              "object": {},  # int-or-string and free-form fields
              "ResourceQuantity": {"type": ["string", "number"]},
              "V1beta1MetricQuantity": {"type": ["string", "number"]}}  # a Quantity; the SDK has no class for it


class Models:
    """Model classes read from the source files of the wheels' `models` packages."""

    def __init__(self, wheels: list[Path]) -> None:
        self.sources: dict[str, str] = {}
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if re.fullmatch(r"(kserve/models|kubernetes/client/models)/[a-z0-9_]+\.py", name):
                        source = z.read(name).decode()
                        for cls in re.findall(r"^class (\w+)\(", source, re.M):
                            self.sources.setdefault(cls, source)

    def known(self, cls: str) -> bool:
        return cls in self.sources or self._go_name(cls) in self.sources

    @staticmethod
    def _go_name(cls: str) -> str | None:
        """The client's name of a type the SDK names by Go package: K8sIoApiAppsV1DeploymentStrategy
        is V1DeploymentStrategy."""
        m = re.fullmatch(r"K8sIoApi[A-Z][a-z]+(V\d+(?:alpha\d+|beta\d+)?[A-Z]\w+)", cls)
        return m.group(1) if m else None

    def fields(self, cls: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """(attribute -> type, attribute -> JSON key, required attributes) of class `cls`."""
        if cls not in self.sources:
            cls = self._go_name(cls)
        source = self.sources[cls]
        types = keys = None
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name == cls:
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                        if stmt.targets[0].id == "openapi_types":
                            types = ast.literal_eval(stmt.value)
                        elif stmt.targets[0].id == "attribute_map":
                            keys = ast.literal_eval(stmt.value)
        if types is None or keys is None:
            raise ValueError(f"{cls}: no openapi_types/attribute_map in its module")
        required = set(re.findall(r"Invalid value for `(\w+)`, must not be `None`", source))
        return types, keys, required


def schema_for(models: Models, root: str, api_version: str, kind: str) -> dict:
    defs: dict[str, dict] = {}
    unknown: set[str] = set()

    def ref(type_name: str) -> dict:
        if type_name in PRIMITIVES:
            return dict(PRIMITIVES[type_name])
        if m := re.fullmatch(r"list\[(.+)\]", type_name):
            return {"type": "array", "items": ref(m.group(1))}
        if m := re.fullmatch(r"dict[(\[]str, (.+)[)\]]", type_name):
            return {"type": "object", "additionalProperties": ref(m.group(1))}
        if not models.known(type_name):  # e.g. Knative's TrafficTarget in status: left open, listed
            unknown.add(type_name)
            return {"$comment": f"{type_name}: no model class in the SDK, not checked"}
        if type_name not in defs:
            defs[type_name] = {}  # placeholder: recursion
            types, keys, required = models.fields(type_name)
            properties = {keys[attr]: ref(t) for attr, t in types.items()}
            body = {"type": "object", "properties": properties, "additionalProperties": False}
            if required:
                body["required"] = sorted(keys[attr] for attr in required)
            defs[type_name] = body
        return {"$ref": f"#/$defs/{type_name}"}

    top = ref(root)
    defs[root] = json.loads(json.dumps(defs[root]))
    defs[root]["properties"]["apiVersion"] = {"const": api_version}
    defs[root]["properties"]["kind"] = {"const": kind}
    defs[root]["required"] = sorted({"apiVersion", "kind", "metadata", "spec"} | set(defs[root].get("required", [])))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"{kind} ({api_version}) generated by deploy/kserve/schema/generate.py from the model "
                        f"classes of PyPI {KSERVE} and {KUBERNETES}; do not edit by hand. Types without a "
                        f"model class, left open: {', '.join(sorted(unknown)) or 'none'}",
            "title": f"{kind} {api_version}", **top, "$defs": dict(sorted(defs.items()))}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", tmp, KSERVE, KUBERNETES], check=True)
        models = Models(sorted(Path(tmp).glob("*.whl")))
        for file, (root, api_version, kind) in ROOTS.items():
            schema = schema_for(models, root, api_version, kind)
            (HERE / file).write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
            print(f"wrote {HERE / file}: {len(schema['$defs'])} definitions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
