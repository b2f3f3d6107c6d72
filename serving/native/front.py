"""The Python half of the native front end: a batch of serialized `ModelInfer` calls in, one
serialized response or one status per call out, on the same core as `advguard serve`.

Per call: the request parsed with the generated protobuf classes, then the same checks in the
same order as `serving.grpc.inference` (model lookup, outputs asked for, the input tensor,
skip_guard), each failure the status `serving.grpc.codes` gives its kind with the core's
message. Per batch: the calls' images stacked and run through their `Pipeline` once (no more
than `max_batch_size` images a run; a call is never split), then each call's share answered by
`serving.answer` and encoded by `serving.grpc.oip.infer_response`.

Example:
    answerer = BatchAnswerer(repo, Limits(), disclosure="verdict", allow_skip_guard=False)
    replies = answerer.answer([(handle, request_bytes), ...])  # [(handle, bytes | None, code, message)]
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from protos.inference import grpc_service_pb2 as pb
from serving.answer import Answers, check_disclosure
from serving.errors import CORE_ERRORS, PermissionDeniedError
from serving.grpc.codes import CODE_NUMBERS, code_name_of
from serving.grpc.oip import infer_response, outputs_for, request_tensor, skip_guard, wanted_outputs
from serving.pipeline import Pipeline
from serving.preprocess import Limits, request_pixels
from serving.runtime.dataplane import SKIP_REFUSED
from serving.runtime.decode import decode_all
from serving.runtime.repository import ModelRepository

log = logging.getLogger(__name__)

Reply = tuple[int, "bytes | None", int, str]  # handle, response (None: failed), status code, message


@dataclass(slots=True)
class Pending:
    """A checked call waiting for its batch."""

    handle: int
    request_id: str
    wanted: tuple[str, ...]
    x: np.ndarray
    guard: bool


def failed(handle: int, err: Exception) -> Reply:
    return handle, None, CODE_NUMBERS[code_name_of(err)], str(err)


class BatchAnswerer:
    """Answers the calls `serving.native`'s transport hands over, a batch at a time."""

    def __init__(self, repo: ModelRepository, limits: Limits, disclosure: str = "verdict",
                 allow_skip_guard: bool = False, max_batch_size: int = 64) -> None:
        self.repo = repo
        self.limits = limits
        self.disclosure = check_disclosure(disclosure)
        self.offered = outputs_for(disclosure == "full")
        self.allow_skip_guard = allow_skip_guard
        self.max_batch_size = max_batch_size
        self.counts: collections.Counter[str] = collections.Counter()  # calls by status name

    def check(self, handle: int, data: bytes) -> tuple[Pipeline, Pending]:
        """One call parsed and checked, in `serving.grpc.inference.ModelInfer`'s order."""
        request = pb.ModelInferRequest.FromString(data)
        pipeline = self.repo.get(request.model_name, request.model_version)
        wanted = wanted_outputs(request, self.offered)
        spec = pipeline.bundle.input
        x = request_tensor(request, spec, self.limits)
        if not isinstance(x, np.ndarray):  # PNG/JPEG files, decoded here as Decoder.decode does inline
            request_pixels(x, self.limits)
            x = decode_all(x, spec, self.limits)
        guard = not skip_guard(request)
        if not guard and not self.allow_skip_guard:
            raise PermissionDeniedError(SKIP_REFUSED)
        return pipeline, Pending(handle, request.id, wanted, x, guard)

    def answer(self, calls: list[tuple[int, bytes]]) -> list[Reply]:
        """Every call's reply: its serialized response, or its status."""
        replies: list[Reply] = []
        by_pipeline: dict[Pipeline, list[Pending]] = {}
        for handle, data in calls:
            try:
                pipeline, pending = self.check(handle, data)
            except CORE_ERRORS as err:
                replies.append(failed(handle, err))
                continue
            except DecodeError:
                replies.append((handle, None, CODE_NUMBERS["INVALID_ARGUMENT"],
                                "the request is not a serialized inference.ModelInferRequest"))
                continue
            by_pipeline.setdefault(pipeline, []).append(pending)
        for pipeline, pending in by_pipeline.items():
            for batch in self.batches(pending):
                replies += self.run(pipeline, batch)
        for reply in replies:
            self.counts["OK" if reply[1] is not None else _name_of_number(reply[2])] += 1
        return replies

    def batches(self, pending: list[Pending]) -> list[list[Pending]]:
        """Calls grouped into runs of at most max_batch_size images (a larger call runs alone)."""
        out, run, images = [], [], 0
        for p in pending:
            if run and images + len(p.x) > self.max_batch_size:
                out.append(run)
                run, images = [], 0
            run.append(p)
            images += len(p.x)
        return out + [run] if run else out

    def run(self, pipeline: Pipeline, batch: list[Pending]) -> list[Reply]:
        """One pipeline run for the batch; each call's share encoded as its response."""
        if len(batch) == 1:
            x, guard = batch[0].x, batch[0].guard
        else:
            x = np.concatenate([p.x for p in batch])
            flags = {p.guard for p in batch}
            guard = flags.pop() if len(flags) == 1 else np.concatenate([np.full(len(p.x), p.guard) for p in batch])
        try:
            result = pipeline.run(x, guard)
        except Exception as err:  # a bug or a broken model: every call of the batch fails, the server goes on
            log.exception("pipeline run failed for a batch of %d calls", len(batch))
            return [(p.handle, None, CODE_NUMBERS["INTERNAL"], f"the model run failed: {err}") for p in batch]
        replies, start = [], 0
        for p in batch:
            n = len(p.x)
            share = result if len(batch) == 1 else result.take(slice(start, start + n))
            start += n
            answers = Answers(pipeline, share, self.disclosure)
            replies.append((p.handle, infer_response(answers, p.wanted, p.request_id).SerializeToString(), 0, ""))
        return replies


def _name_of_number(code: int) -> str:
    return next((name for name, number in CODE_NUMBERS.items() if number == code), str(code))
