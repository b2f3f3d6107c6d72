"""The protocol-neutral data plane (KServe's and MLServer's `dataplane`): what every front end
asks of the core, whatever its wire. A front end decodes its request, calls these, and encodes
the `Answers` it gets back; core errors (`serving.errors`) pass through for the front end's
status table.

Example:
    served = plane.model("fmnist-guarded")              # UnknownModelError if not loaded
    answers = await plane.classify(served, x, guard=True, deadline=None)
"""
from __future__ import annotations

import asyncio

import numpy as np

from serving.answer import Answers, check_disclosure
from serving.errors import PermissionDeniedError
from serving.guard import verdict_name
from serving.metrics import Metrics, call_labels
from serving.pipeline import PipelineResult
from serving.preprocess import Limits
from serving.runtime.decode import Decoder
from serving.runtime.models import ModelManager, ServedModel


def verdict_label(result: PipelineResult) -> str:
    """The most severe verdict in a result ('unguarded' when the guard did not run)."""
    if result.guard is None:
        return "unguarded"
    verdicts = result.guard.verdicts
    if len(verdicts) == 1:  # one image, guarded (a result the guard ran on for none has no guard)
        return verdict_name(int(verdicts[0]))
    return verdict_name(int(verdicts[result.guarded].max()))


SKIP_REFUSED = ("skip_guard is not allowed on this server: every answer is guarded (an operator can "
                "start it with --allow-skip-guard)")


class DataPlane:
    """`disclosure`: what answers show of the guard (`serving.answer`); `allow_skip_guard`: honour a
    request's skip_guard (else PermissionDeniedError); `default_deadline`: seconds allowed to calls
    that set no deadline (None: unbounded)."""

    def __init__(self, models: ModelManager, metrics: Metrics, limits: Limits, disclosure: str = "verdict",
                 allow_skip_guard: bool = False, default_deadline: float | None = 60.0) -> None:
        self.models = models
        self.metrics = metrics
        self.limits = limits
        self.disclosure = check_disclosure(disclosure)
        self.full = disclosure == "full"
        self.allow_skip_guard = allow_skip_guard
        self.decoder = Decoder(limits)
        self.default_deadline = default_deadline  # seconds, for calls that set no deadline

    def model(self, name: str = "", version: str = "") -> ServedModel:
        """The loaded bundle `name` (default bundle when empty), `version` (latest when empty)."""
        return self.models.repo.get(name, version)

    def names(self) -> list[str]:
        return self.models.repo.names()

    def versions(self, name: str) -> list[str]:
        return self.models.repo.versions(name)

    async def classify(self, served: ServedModel, x: np.ndarray, guard: bool, deadline: float | None) -> Answers:
        """Queue `x` (N x C x H x W float32) for a batch; its answers once the batch ran."""
        if not guard and not self.allow_skip_guard:
            raise PermissionDeniedError(SKIP_REFUSED)
        result = await served.batcher.submit(x, guard, deadline)
        return self.answers(served, result)

    def submit_nowait(self, served: ServedModel, x: np.ndarray, guard: bool,
                      deadline: float | None) -> asyncio.Future:
        """Queue `x` now (QueueFullError at once when full); a future of its PipelineResult."""
        if not guard and not self.allow_skip_guard:
            raise PermissionDeniedError(SKIP_REFUSED)
        return served.batcher.submit_nowait(x, guard, deadline)

    def answers(self, served: ServedModel, result: PipelineResult) -> Answers:
        """The answers for a result, with the call's model and verdict labels set (the batcher
        counted verdicts and flags once per batch, see `runtime.models.verdict_counter`)."""
        labels = call_labels()
        labels.model = served.bundle.name
        labels.verdict = verdict_label(result)
        return Answers(served.pipeline, result, self.disclosure)
