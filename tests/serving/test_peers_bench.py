"""bench.peers' advguard part on loopback, about 1 s a row: advguard's own Classify rows (guarded
and with skip_guard, at c = 1, 8, 32; with `--front native` too where its toolchain exists) are
there, count only answered calls (grpc-status 0: h2load saw the answer's body), and are set
against the best peer's OIP gRPC row; the native front end has OIP gRPC rows and no REST rows.

The benchmark runs as `python -m bench.peers` in its own process: it imports protos.inference,
which must stay out of the test process (see conftest.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peer_table
from serving.native.build import missing
from tests.serving.tiny_bundles import write_bundle

REPO = Path(__file__).resolve().parents[2]
SERVERS = ("advguard",) if missing() else ("advguard", "advguard-native")
VARIANTS = tuple(f"{server.replace('-', ' ')} {kind}" for server in SERVERS for kind in ("guarded", "unguarded"))
CONCURRENCY = (1, 8, 32)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("wrk") is None,
                                 reason="h2load and wrk needed: apt-get install nghttp2-client wrk")]


@pytest.fixture(scope="module")
def advguard_run(tmp_path_factory) -> tuple[dict, str]:
    """`bench.peers --servers advguard [advguard-native] --seconds 1 --rounds 1` on a tiny bundle:
    (its --json, its stdout)."""
    tmp = tmp_path_factory.mktemp("peers")
    write_bundle(tmp / "store", "tiny", "1")
    out = tmp / "peers.json"
    done = subprocess.run([sys.executable, "-m", "bench.peers", "--store", str(tmp / "store"), "--model", "tiny",
                           "--servers", *SERVERS, "--threads", "1", "--seconds", "1", "--rounds", "1",
                           "--json", str(out)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


def own_rows(report: dict) -> dict[tuple[str, int], dict]:
    return {(r["what"], r["c"]): r for r in report["rows"] if r["proto"] == peer_table.OWN_API}


def test_own_classify_rows_count_only_answered_calls(advguard_run):
    report, stdout = advguard_run
    assert report["notes"] == []  # both answers checked against ONNX Runtime, no server failed
    rows = own_rows(report)
    assert set(rows) == {(what, c) for what in VARIANTS for c in CONCURRENCY}
    for r in rows.values():
        # every call answered with a body of the checked answer's size: no "gRPC error (no body)", no "no response"
        assert r["codes"] == {"OK": r["calls"]} and r["errors"] == 0, r
        assert r["calls"] >= 10 * r["c"] and r["rate"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], r
    assert "Classify: advguard's own API" in stdout and "no such API" in stdout


def test_own_classify_rows_carry_a_ratio_against_the_best_peers_oip_grpc(advguard_run):
    report, _ = advguard_run
    no_peer = [r for r in peer_table.compare(report["rows"]) if r["proto"] == peer_table.OWN_API]
    assert len(no_peer) == 3 * len(VARIANTS) and all(r["rate_ratio"] is None and r["vs"] is None for r in no_peer)
    # stand-in peers: the slower one's gRPC and the REST rows must not be what Classify is set against
    peers = [{"what": what, "proto": proto, "c": c, "rate": rate, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0,
              "load": 0.0}
             for c in CONCURRENCY for what, proto, rate in (("kserve", "gRPC", 100.0), ("mlserver", "gRPC", 50.0),
                                                            ("kserve", "REST", 1e6))]
    table = {(r["what"], r["proto"], r["c"]): r for r in peer_table.compare(report["rows"] + peers)}
    for (what, c), r in own_rows(report).items():
        got = table[(what, peer_table.OWN_API, c)]
        assert got["vs"] == "kserve gRPC"
        assert got["rate_ratio"] == pytest.approx(r["rate"] / 100.0)
        assert got["p99_ratio"] == pytest.approx(r["p99_ms"] / 2.0)


def test_the_native_front_end_has_oip_grpc_rows_and_no_rest_rows(advguard_run):
    if "advguard-native" not in SERVERS:
        pytest.skip(f"no C++ toolchain for the native front end ({missing()})")
    report, stdout = advguard_run
    native = {(r["proto"], r["c"]) for r in report["rows"] if r["what"].startswith("advguard native")}
    assert native == {(proto, c) for proto in ("gRPC", peer_table.OWN_API) for c in CONCURRENCY}
    assert "native guarded" in stdout
