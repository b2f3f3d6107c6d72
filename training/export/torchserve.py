"""Package a bundle as a TorchServe model archive (.mar) with advguard's handler."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serving.bundle import MANIFEST, load_bundle
from training.evaluate.twin import TWINS

log = logging.getLogger(__name__)
HANDLER = Path(__file__).resolve().parents[2] / "serving" / "torchserve_handler.py"


def build_mar(bundle_dir: Path, out_dir: Path | None = None) -> Path:
    """Write `<name>.mar` (manifest.json, the ONNX models, the twins/ folder of a composed bundle
    and the handler) next to the bundle, or in `out_dir`. Returns the archive's path. Needs torch-model-archiver (installed by make setup)."""
    bundle = load_bundle(bundle_dir)
    out_dir = Path(out_dir or bundle_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archiver = shutil.which("torch-model-archiver") or str(Path(sys.executable).parent / "torch-model-archiver")
    files = [str(bundle.path / MANIFEST)] + list(dict.fromkeys(str(bundle.path / m.file) for m in bundle.models))
    with tempfile.TemporaryDirectory() as extra:
        if (bundle.path / TWINS).is_dir():  # listed in the manifest, so the handler's load checks them
            # the archiver copies a folder's contents to the archive's root: a folder holding
            # twins/ keeps the twins under twins/, where the manifest says they are
            shutil.copytree(bundle.path / TWINS, Path(extra) / TWINS)
            files.append(extra)
        command = [archiver, "--model-name", bundle.name, "--version", bundle.version,
                   "--handler", str(HANDLER), "--extra-files", ",".join(files),
                   "--export-path", str(out_dir), "--force"]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr.strip()}")
    mar = out_dir / f"{bundle.name}.mar"
    log.info("wrote %s", mar)
    return mar

