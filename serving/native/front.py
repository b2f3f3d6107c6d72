"""The Python half of the native front end: a batch of serialized calls in, one serialized
response or one status per call out, on the same core as `advguard serve`, with its per-call
metrics (`serving.metrics`: calls by method and code, latency by model, method and verdict;
the batcher's series per model run).

Per call: the request parsed with the generated protobuf classes and checked by its method's
handler (`serving.native.methods`: the same checks in the same order as `advguard serve`'s
servicers), each failure the status `serving.grpc.codes` gives its kind with the core's message.
Per batch: the batched calls' images stacked per model and run through its `Pipeline` once (no
more than `max_batch_size` images a run; a call is never split), then each call's share answered
by `serving.answer` and encoded by its method.

Example:
    answerer = BatchAnswerer(method_table(handlers), metrics, max_batch_size=64)
    replies = answerer.answer(transport.take(...))  # [(handle, bytes | None, code, message)]
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from serving.answer import Answers, check_disclosure
from serving.errors import CORE_ERRORS, DeadlineExceededError
from serving.grpc.codes import CODE_NAMES, CODE_NUMBERS, code_name_of
from serving.metrics import Metrics
from serving.native.methods import Method, Work, not_a_request
from serving.runtime.dataplane import verdict_label
from serving.runtime.models import ServedModel

log = logging.getLogger(__name__)

Reply = tuple[int, "bytes | None", int, str]  # handle, response (None: failed), status code, message
Call = tuple[int, int, bytes, int, int]  # handle, method number, request bytes, arrival, deadline (0: none)
EXPIRED = "deadline passed while queued"  # the batcher's words


@dataclass(slots=True)
class Pending:
    """A checked batched call waiting for its model run."""

    handle: int
    method: int
    arrival: int
    work: Work


class BatchAnswerer:
    """Answers the calls `serving.native`'s transport hands over, a batch at a time."""

    def __init__(self, methods: list[Method], metrics: Metrics, disclosure: str = "verdict",
                 max_batch_size: int = 64, default_deadline: float | None = None) -> None:
        """`default_deadline`: seconds allowed to calls that set no deadline (None: unbounded);
        a call whose deadline passed before its batch was taken fails DEADLINE_EXCEEDED unrun."""
        self.methods = methods
        self.default_deadline_ns = int(default_deadline * 1e9) if default_deadline else 0
        self.disclosure = check_disclosure(disclosure)
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        # series looked up once each (a label lookup costs a lock and a few tuples)
        self._requests: dict[tuple[int, str], object] = {}
        self._latency: dict[tuple[str, int, str], object] = {}
        self.batches = self.calls = 0  # pipeline runs and the batched calls in them

    def answer(self, calls: list[Call]) -> list[Reply]:
        """Every call's reply: its serialized response, or its status."""
        replies: list[Reply] = []
        by_model: dict[int, list[Pending]] = {}  # by id(ServedModel): one run per served version
        now = time.monotonic_ns()
        for handle, number, data, arrival, deadline in calls:
            method = self.methods[number]
            deadline = deadline or (arrival + self.default_deadline_ns if self.default_deadline_ns else 0)
            if deadline and now >= deadline:
                replies.append(self.failed(handle, number, arrival, DeadlineExceededError(EXPIRED)))
                continue
            try:
                request = method.request.FromString(data)
                if method.check is None:
                    payload = method.answer(request).SerializeToString()
                    replies.append(self.done(handle, number, arrival, payload))
                    continue
                work = method.check(request)
            except DecodeError:
                replies.append(self.failed(handle, number, arrival, not_a_request(method)))
                continue
            except CORE_ERRORS as err:
                replies.append(self.failed(handle, number, arrival, err))
                continue
            except Exception:  # a bug: this call fails, the others go on
                log.exception("answering a %s call failed", method.name)
                replies.append(self.failed(handle, number, arrival, None, "internal error"))
                continue
            by_model.setdefault(id(work.served), []).append(Pending(handle, number, arrival, work))
        for pending in by_model.values():
            for batch in self.batches_of(pending):
                replies += self.run(pending[0].work.served, batch)
        return replies

    def batches_of(self, pending: list[Pending]) -> list[list[Pending]]:
        """Calls grouped into runs of at most max_batch_size images (a larger call runs alone)."""
        out, run, images = [], [], 0
        for p in pending:
            if run and images + len(p.work.x) > self.max_batch_size:
                out.append(run)
                run, images = [], 0
            run.append(p)
            images += len(p.work.x)
        return out + [run] if run else out

    def run(self, served: ServedModel, batch: list[Pending]) -> list[Reply]:
        """One pipeline run for the batch; each call's share encoded as its response."""
        if len(batch) == 1:
            x, guard = batch[0].work.x, batch[0].work.guard
        else:
            x = np.concatenate([p.work.x for p in batch])
            flags = {p.work.guard for p in batch}
            guard = flags.pop() if len(flags) == 1 else np.concatenate([np.full(len(p.work.x), p.work.guard)
                                                                        for p in batch])
        pipeline = served.pipeline
        try:
            served.batcher.on_batch(len(x))  # the batcher's series (`runtime.models`): batch size, verdicts, flags
            result = pipeline.run(x, guard)
            served.batcher.on_result(result)
        except Exception as err:  # a bug or a broken model: every call of the batch fails, the server goes on
            log.exception("pipeline run failed for a batch of %d calls", len(batch))
            return [self.failed(p.handle, p.method, p.arrival, None, f"the model run failed: {err}") for p in batch]
        self.batches, self.calls = self.batches + 1, self.calls + len(batch)
        replies, start, model = [], 0, served.bundle.name
        for p in batch:
            n = len(p.work.x)
            share = result if len(batch) == 1 else result.take(slice(start, start + n))
            start += n
            payload = p.work.encode(Answers(pipeline, share, self.disclosure))
            replies.append(self.done(p.handle, p.method, p.arrival, payload, model, verdict_label(share)))
        return replies

    def done(self, handle: int, method: int, arrival: int, payload: bytes, model: str = "",
             verdict: str = "none") -> Reply:
        self.count(method, "OK", model, verdict, arrival)
        return handle, payload, 0, ""

    def failed(self, handle: int, method: int, arrival: int, err: Exception | None, message: str = "") -> Reply:
        """The call's status: the table's for a core error `err`, else INTERNAL with `message`."""
        name = code_name_of(err) if err is not None else "INTERNAL"
        self.count(method, name, "", "error", arrival)
        return handle, None, CODE_NUMBERS[name], str(err) if err is not None else message

    def count(self, method: int, code: str, model: str, verdict: str, arrival: int | None) -> None:
        """One call's `advguard_requests_total` and (with its arrival) latency, as the interceptor counts."""
        counter = self._requests.get((method, code))
        if counter is None:
            counter = self._requests[(method, code)] = self.metrics.requests.labels(self.methods[method].name, code)
        counter.inc()
        if arrival is None:
            return
        key = (model, method, verdict)
        histogram = self._latency.get(key)
        if histogram is None:
            histogram = self._latency[key] = self.metrics.latency.labels(model, self.methods[method].name, verdict)
        histogram.observe((time.monotonic_ns() - arrival) / 1e9)

    def refused(self, refusals: list[tuple[int, int]]) -> None:
        """Calls the transport refused before reading them (auth, draining, unimplemented)."""
        for method, code in refusals:
            self.count(method, CODE_NAMES.get(code, str(code)), "", "error", None)
