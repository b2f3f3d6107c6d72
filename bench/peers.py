"""`python -m bench.peers`: advguard beside its peers, MLServer and KServe's ModelServer, serving
the same bundle's primary ONNX model over the Open Inference Protocol v2, and advguard's own
`Classify` set against the same peer rows (issue 20).

Each server runs alone, one after another, in `--rounds` interleaved rounds (the order reversed
every other round, so drift in the machine's load falls on all alike); every round keeps its
rows and the report shows the fastest round per row. The servers:
  advguard guarded     `advguard serve --http-port` (its default batching), the whole guard;
  advguard unguarded   the same server (`--allow-skip-guard`), requests with `skip_guard`;
  advguard native ...  the same two with `--front native` (C++ gRPC; no REST rows: it has no HTTP port);
  MLServer             `mlserver start` with bench/peers/mlserver_runtime.py (an MLModel);
  KServe               bench/peers/kserve_model.py (a kserve.Model in KServe's ModelServer);
all with ONNX Runtime at the same intra-op thread count (`--threads`, one inter-op thread), the
peers in their own venvs under build/peers/ (`make peers-venvs`). Before the load, one answer of
each server over gRPC and over REST is checked against ONNX Runtime in this process. The load:
OIP `ModelInfer` over gRPC from h2load (one pre-framed request, `bench/h2load.py`) and REST
`POST /v2/models/<name>/infer` with a JSON body from wrk (`bench/wrk.py`), one 1 x 1 x 28 x 28
FP32 image per call, at concurrency 1, 8 and 32, for `--seconds` each. advguard also answers
its own API, `/advguard.v1.GuardedClassifier/Classify` with one uint8 1 x 28 x 28 image a call
(guarded, and with `skip_guard`), from h2load at the same concurrencies, once one answer's label
matched ONNX Runtime's (`bench/classify.py`); the peers have no such API, so these rows are set
against the best peer's OIP gRPC row. Each row: req/s, p50/p99, errors (h2load counts a gRPC call
answered only when its body came; a non-zero grpc-status comes without one), the 1-minute load
average when it ended, its rate and p99 against the best peer's at the same protocol and
concurrency (`bench/peer_table.py`); then the c=32 goals. Example (smoke: `--seconds 2 --rounds 1`):
    python -m bench.peers --store model_store --model fmnist-fast --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from advguard.cli.serve import parse_ready
from bench import h2load, peer_table, wrk
from bench.classify import CLASSIFY, classify_once, classify_request
from protos.inference import grpc_service_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "bench" / "peers"
VENVS = REPO / "build" / "peers"
CONCURRENCY = (1, 8, 32)
INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVERS = ("advguard", "advguard-native", "mlserver", "kserve")  # advguard-native: --front native (gRPC only)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process (its own session, so that its workers stop with it), its ports, the model name."""

    def __init__(self, name: str, cmd: list[str], model: str, grpc_port: int, http_port: int, env: dict | None = None,
                 cwd: Path | None = None, ready_line: bool = False, log: Path | None = None) -> None:
        self.name, self.model = name, model
        self.log = log or Path(tempfile.mkstemp(prefix=f"peers-{name}-", suffix=".log")[1])
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd or REPO, env={**os.environ, **(env or {})}, stderr=err,
                                         stdout=subprocess.PIPE if ready_line else err, text=True,
                                         start_new_session=True)
        if ready_line:  # advguard prints its ports once loaded
            line = self.proc.stdout.readline()
            try:
                info = parse_ready(line)
            except ValueError:
                self.stop()
                raise RuntimeError(f"{name} did not start: {line!r}; log {self.log}") from None
            grpc_port, http_port = info["port"], info["http_port"]
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.http = None if http_port is None else f"127.0.0.1:{http_port}"  # None: no REST (--front native)

    def wait_ready(self, timeout: float = 180) -> None:
        if self.http is None:
            return  # advguard's ready line comes once every bundle is loaded and the port is open
        url = f"http://{self.http}/v2/models/{self.model}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; log {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(name: str, args, bundle: Path, model_file: Path, model: str) -> Server:
    threads = str(args.threads)
    if name.startswith("advguard"):
        cmd = [sys.executable, "-m", "advguard.cli.main", "serve", "--store", args.store, "--port", "0",
               "--metrics-port", "0", "--poll-seconds", "0", "--threads", threads, "--allow-skip-guard",
               "--default-model", model]
        cmd += (["--front", "native"] if name == "advguard-native" else ["--http-port", "0"])
        cmd += ["--workers", str(args.advguard_workers)]
        return Server(name, cmd, model, 0, 0, ready_line=True)
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} missing: run `make peers-venvs`")
    grpc_port, http_port = free_port(), free_port()
    env = {"PYTHONPATH": str(PEERS)}
    if name == "mlserver":
        folder = Path(tempfile.mkdtemp(prefix="peers-mlserver-"))
        (folder / "settings.json").write_text(json.dumps({
            "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(),
            "parallel_workers": args.mlserver_workers}))
        (folder / "model").mkdir()
        (folder / "model" / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_runtime.OnnxRuntimeClassifier",
            "parameters": {"uri": str(model_file), "version": bundle.name, "extra": {"threads": args.threads}}}))
        return Server(name, [str(VENVS / name / "bin" / "mlserver"), "start", str(folder)], model, grpc_port,
                      http_port, env)
    cmd = [str(python), str(PEERS / "kserve_model.py"), "--model_name", model, "--model_file", str(model_file),
           "--threads", threads, "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    return Server(name, cmd, model, grpc_port, http_port, env)


def requests(model: str, x: np.ndarray, skip_guard: bool) -> tuple[bytes, bytes]:
    """(the ModelInfer message, the REST JSON body) for image batch `x`."""
    message = pb.ModelInferRequest(model_name=model, id="bench")
    message.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.astype("<f4").tobytes())
    body = {"id": "bench", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}
    if skip_guard:
        message.parameters["skip_guard"].bool_param = True
        body["parameters"] = {"skip_guard": True}
    return message.SerializeToString(), json.dumps(body).encode()


def grpc_probabilities(reply: pb.ModelInferResponse) -> np.ndarray:
    for i, output in enumerate(reply.outputs):
        if output.name == "probabilities":
            data = (np.frombuffer(reply.raw_output_contents[i], "<f4") if reply.raw_output_contents
                    else np.asarray(output.contents.fp32_contents, np.float32))
            return data.reshape([int(d) for d in output.shape])
    raise RuntimeError(f"no probabilities in {[o.name for o in reply.outputs]}")


def answered_by(reply: pb.ModelInferResponse) -> str | None:
    """advguard's `answered_by` (the model file that answered), None from the peers."""
    for i, output in enumerate(reply.outputs):
        if output.name == "answered_by" and reply.raw_output_contents:
            return reply.raw_output_contents[i][4:].decode()  # one element: 4-byte length, then the name
    return None


def check_answers(server: Server, message: bytes, body: bytes, want: np.ndarray, primary: str) -> int:
    """Compare one gRPC and one REST answer with ONNX Runtime's on the primary model (unless
    advguard's guard had the image answered by another model); the gRPC answer's size."""
    with grpc.insecure_channel(server.grpc) as channel:
        raw = channel.unary_unary(INFER)(message, timeout=60)
    reply = pb.ModelInferResponse.FromString(raw)
    if answered_by(reply) not in (None, primary):
        print(f"{server.name}: answered by {answered_by(reply)}, not {primary}: not compared", file=sys.stderr)
        return len(raw)
    got = grpc_probabilities(reply)
    if server.http is None:
        answers = [("gRPC", got)]
    else:
        reply = urllib.request.urlopen(urllib.request.Request(
            f"http://{server.http}/v2/models/{server.model}/infer", body, {"Content-Type": "application/json"}),
            timeout=60)
        output = next(o for o in json.loads(reply.read())["outputs"] if o["name"] == "probabilities")
        answers = [("gRPC", got), ("REST", np.asarray(output["data"], np.float32).reshape(want.shape))]
    for wire, probs in answers:
        if not np.allclose(probs, want, atol=1e-5):
            raise RuntimeError(f"{server.name} {wire} answer differs from ONNX Runtime's: {probs} vs {want}")
    return len(raw)


def check_classify(server: Server, model: str, image: np.ndarray, skip_guard: bool, want: np.ndarray,
                   primary: str) -> tuple[bytes, int]:
    """One Classify answer's label against ONNX Runtime's on the primary model (unless the guard had
    the image answered by another model); (the request, serialized; the answer's size)."""
    request = classify_request(model, image, skip_guard)
    reply, size = classify_once(server.grpc, request)
    if reply.answered_by not in ("", primary):
        print(f"{server.name}: Classify answered by {reply.answered_by}, not {primary}: not compared", file=sys.stderr)
    elif reply.class_index != int(want.argmax()):
        raise RuntimeError(f"{server.name} Classify answered class {reply.class_index}, ONNX Runtime's "
                           f"{int(want.argmax())}")
    return request.SerializeToString(), size


def grpc_rows(server: Server, variant: str, proto: str, method: str, message: bytes, answer: int,
              seconds: float) -> list[dict]:
    """Unary `method` from h2load at each concurrency, for about `seconds` at a warm-up's rate."""
    rows = []
    for c in CONCURRENCY:
        warm = h2load.grpc_load(server.grpc, method, message, answer, max(100, 20 * c), c)
        total = max(10 * c, int(warm.rate * seconds))
        rows.append(row(variant, proto, c, h2load.grpc_load(server.grpc, method, message, answer, total, c)))
    return rows


def measure(server: Server, variant: str, message: bytes, body: bytes, answer: int, seconds: float) -> list[dict]:
    rows = grpc_rows(server, variant, "gRPC", INFER, message, answer, seconds)
    if server.http is None:
        return rows
    url = f"http://{server.http}/v2/models/{server.model}/infer"
    wrk.post_load(url, body, "application/json", 1, 8)  # warm up
    for c in CONCURRENCY:
        rows.append(row(variant, "REST", c, wrk.post_load(url, body, "application/json", seconds, c)))
    return rows


def row(variant: str, proto: str, c: int, result) -> dict:
    return {"what": variant, "proto": proto, "c": c, "rate": result.rate, "calls": result.ok, "errors": result.errors,
            "codes": dict(result.codes), "p50_ms": result.percentile(50) * 1e3, "p99_ms": result.percentile(99) * 1e3,
            "load": os.getloadavg()[0]}


def first_image() -> np.ndarray:
    """The first Fashion-MNIST test image as 1 x 1 x 28 x 28 uint8 (a fixed random one without the data)."""
    try:
        from training.data.mnist_family import load_fashion_mnist

        x = load_fashion_mnist()[2][:1, None]
    except (ImportError, OSError, FileNotFoundError):
        x = np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    return np.ascontiguousarray(x, dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store")
    p.add_argument("--model", default="fmnist-fast")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, every server")
    p.add_argument("--seconds", type=float, default=10.0, help="load per protocol and concurrency")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the fastest per row is shown)")
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    p.add_argument("--mlserver-workers", type=int, default=1, help="MLServer's parallel_workers (its default: 1)")
    p.add_argument("--advguard-workers", type=int, default=1,
                   help="advguard's --workers, both front ends (server processes on one port; scaling runs: "
                        "1, 2, 4, 8 with 2N cores)")
    p.add_argument("--json", type=Path, help="also write every round's rows, the table and the notes here")
    args = p.parse_args(argv)
    if not (h2load.available() and wrk.available()):
        raise SystemExit("h2load and wrk are needed: `make loadgen-tools` (apt-get install nghttp2-client wrk)")
    from serving.bundle import version_dirs
    from serving.engine import EngineOptions, OnnxModel

    folders = version_dirs(Path(args.store), args.model)
    if not folders:
        raise SystemExit(f"no bundle {args.model} in {args.store}: run `make bundle`")
    bundle = folders[-1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    model_file = bundle / next(m["file"] for m in manifest["models"] if m["role"] == "primary")
    image = first_image()
    x = image.astype(np.float32) / 255
    want = OnnxModel.load(model_file, EngineOptions(threads=args.threads), data=model_file.read_bytes()).probabilities(x)
    print(f"bundle {bundle} (primary {model_file.name}); {platform.node()} {os.cpu_count()} CPUs; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; ONNX Runtime threads {args.threads}; "
          f"{args.seconds:g} s per row, {args.rounds} round(s)", flush=True)
    rows, notes = [], []
    for round_ in range(args.rounds):
        for name in (args.servers if round_ % 2 == 0 else args.servers[::-1]):
            server = None
            try:
                server = start(name, args, bundle, model_file, manifest["name"])
                server.wait_ready()
                label = name.replace("-", " ")  # "advguard native guarded"
                variants = ([(f"{label} guarded", False), (f"{label} unguarded", True)] if name.startswith("advguard")
                            else [(name, False)])
                for variant, skip in variants:
                    message, body = requests(manifest["name"], x, skip)
                    answer = check_answers(server, message, body, want, model_file.name)
                    own = (check_classify(server, manifest["name"], image[0], skip, want, model_file.name)
                           if name.startswith("advguard") else None)  # its own API too, set against the peers' OIP gRPC
                    rows += measure(server, variant, message, body, answer, args.seconds)
                    if own is not None:
                        rows += grpc_rows(server, variant, peer_table.OWN_API, CLASSIFY, *own, args.seconds)
                    print(f"round {round_ + 1}: {variant} done", file=sys.stderr, flush=True)
            except (RuntimeError, OSError, subprocess.SubprocessError, grpc.RpcError) as err:
                notes.append(f"{name}, round {round_ + 1}: n/a: {err}")
            finally:
                if server is not None:
                    server.stop()
    table = peer_table.compare(rows)
    print("\n".join(peer_table.lines(table, notes)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
