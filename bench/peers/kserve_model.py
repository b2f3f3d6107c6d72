"""The KServe runtime of the peer benchmark (`bench/peers.py`): a `kserve.Model` in KServe's
ModelServer (REST v2 and gRPC) that answers OIP `infer` on one input tensor (FP32
N x C x H x W in [0, 1]) with `probabilities` (FP32 N x K) and `class_index` (INT64 N) from ONNX
Runtime (`onnx_classifier`). Runs in KServe's venv (build/peers/kserve) with bench/peers on
PYTHONPATH. KServe logs a line per call unless its latency logging is off and its loggers (and
uvicorn's access log) are at WARNING: both are done here, so logging costs no peer more than
advguard.

Example:
    build/peers/kserve/bin/python bench/peers/kserve_model.py --model_name fmnist-fast \\
        --model_file model_store/fmnist-fast/1/model.onnx --threads 1 --http_port 8080 --grpc_port 8081
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from onnx_classifier import OnnxClassifier


class OnnxRuntimeClassifier(Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads
        self.load()

    def load(self) -> bool:
        self.classifier = OnnxClassifier(self.path, self.threads)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        probs, classes = self.classifier(x)
        outputs = []
        for name, datatype, values in (("probabilities", "FP32", probs), ("class_index", "INT64", classes)):
            output = InferOutput(name, list(values.shape), datatype)
            output.set_data_from_numpy(values, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args, _ = parser.parse_known_args()
    model = OnnxRuntimeClassifier(args.model_name, args.model_file, args.threads)
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_latency_logging=False)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
