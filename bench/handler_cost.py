"""`python -m bench.handler_cost`: what advguard's own code costs per call (guarded Classify by
default; `--api oip` for the Open Inference Protocol's ModelInfer, `--skip-guard` for unguarded
calls), without gRPC's transport, on the event loop thread.

The server's handler, interceptor (auth check, metrics), dynamic batcher and pipeline run as in
`advguard serve`, on one asyncio loop, with `concurrency` calls in flight; only gRPC is left out
(requests are parsed from and responses serialized to bytes here, the servicer context is a
stub). It prints calls/s and the loop thread's CPU time per call (`time.thread_time`), the part
of a call's cost that advguard's Python controls; compare it with the server's per-call CPU
under load (bench.serve, bench.percall_cpu) to see how much is gRPC's. Example:
    python -m bench.handler_cost --store model_store --model fmnist-fast --api oip
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import NamedTuple

import grpc

from bench.serve import clean_images, image_messages
from protos.advguard.v1 import guard_pb2

METHODS = {"classify": "/advguard.v1.GuardedClassifier/Classify", "oip": "/inference.GRPCInferenceService/ModelInfer"}


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple


class StubContext:
    """What the handler asks of a grpc.aio.ServicerContext on the success path."""

    def time_remaining(self):
        return None

    def code(self):
        return None

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


def request_bytes(api: str, model: str, skip_guard: bool) -> tuple[bytes, type]:
    """One call's serialized request (the first test image), and its message class."""
    image = clean_images(1)[0]
    if api == "classify":
        request = guard_pb2.ClassifyRequest(model=model, image=image_messages(image[None])[0], skip_guard=skip_guard)
        return request.SerializeToString(), guard_pb2.ClassifyRequest
    from protos.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=[1, *image.shape])
    request.raw_input_contents.append((image[None].astype("<f4") / 255).tobytes())
    if skip_guard:
        request.parameters["skip_guard"].bool_param = True
    return request.SerializeToString(), pb.ModelInferRequest


async def measure(store: Path, model: str, calls: int, concurrency: int, api: str = "classify",
                  skip_guard: bool = False, threads: int = 0) -> tuple[float, float]:
    """(calls/s, loop-thread CPU seconds per call)."""
    from serving.runtime.batcher import BatchingOptions
    from serving.runtime.dataplane import DataPlane
    from serving.engine import EngineOptions
    from serving.grpc.interceptors import ServerInterceptor
    from serving.metrics import Metrics
    from serving.preprocess import Limits
    from serving.runtime.models import ModelManager

    metrics = Metrics()
    models = ModelManager(store, EngineOptions(threads=threads), BatchingOptions(), metrics, model)
    await models.load_all()
    plane = DataPlane(models, metrics, Limits(), allow_skip_guard=skip_guard)
    if api == "classify":
        from serving.grpc.classifier import GuardedClassifierServicer

        method = GuardedClassifierServicer(plane).Classify
    else:
        from serving.grpc.inference import InferenceServicer

        method = InferenceServicer(plane).ModelInfer

    async def continuation(details):
        return grpc.unary_unary_rpc_method_handler(method)

    details = CallDetails(METHODS[api], ())
    handler = (await ServerInterceptor(metrics).intercept_service(continuation, details)).unary_unary
    message, request_type = request_bytes(api, model, skip_guard)

    async def client(n: int) -> None:
        for _ in range(n):  # each call in its own task, as gRPC runs it
            request = request_type.FromString(message)
            response = await asyncio.get_running_loop().create_task(handler(request, StubContext()))
            response.SerializeToString()

    await asyncio.gather(*[client(50) for _ in range(concurrency)])  # warm up
    began, cpu = time.perf_counter(), time.thread_time()
    await asyncio.gather(*[client(calls // concurrency) for _ in range(concurrency)])
    done = calls // concurrency * concurrency
    rate, per_call = done / (time.perf_counter() - began), (time.thread_time() - cpu) / done
    await models.close()
    return rate, per_call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store", type=Path)
    p.add_argument("--model", default="fmnist-fast")
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--api", choices=tuple(METHODS), default="classify")
    p.add_argument("--skip-guard", action="store_true", help="unguarded calls (the server allows skip_guard)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    args = p.parse_args(argv)
    rate, per_call = asyncio.run(measure(args.store, args.model, args.calls, args.concurrency, args.api, args.skip_guard,
                                         args.threads))
    what = f"{'ModelInfer' if args.api == 'oip' else 'Classify'} {'skip_guard' if args.skip_guard else 'guarded'}"
    print(f"{what} without gRPC, c={args.concurrency}: {rate:,.0f} calls/s; "
          f"event loop thread {per_call * 1e6:.1f} us CPU per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
