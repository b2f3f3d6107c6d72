"""bench.torchserve_rest (bench.serve's TorchServe row) runs TorchServe as deployed, token
authorization on: its load generator's calls carry the inference key and are answered, a call
without the key is not."""
from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from bench.torchserve_rest import TorchServe, png_files, rest_load
from tests.serving.tiny_bundles import write_bundle

pytestmark = pytest.mark.skipif(shutil.which("java") is None,
                                reason="TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)")


def test_the_benchmark_calls_torchserve_with_its_inference_key(tmp_path):
    bundle = write_bundle(tmp_path / "store", "tiny", "1")
    bodies = png_files(np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8))
    with TorchServe(bundle) as ts:
        answered = asyncio.run(rest_load(ts.port, ts.path, bodies, 16, 2, token=ts.token))
        keyless = urllib.request.Request(f"http://127.0.0.1:{ts.port}{ts.path}", data=bodies[0], method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(keyless, timeout=30)
        body = json.loads(refused.value.read() or b"{}")
    assert dict(answered.codes) == {"OK": 16}
    assert refused.value.code == 400 and "token" in json.dumps(body).lower(), body
