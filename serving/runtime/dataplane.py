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

from serving.answer import Answers
from serving.guard import verdict_name
from serving.metrics import Metrics, call_labels
from serving.pipeline import PipelineResult
from serving.preprocess import Limits
from serving.runtime.models import ModelManager, ServedModel


def verdict_label(result: PipelineResult) -> str:
    """The most severe verdict in a result ('unguarded' when the guard did not run)."""
    if result.guard is None:
        return "unguarded"
    return verdict_name(int(result.guard.verdicts[result.guarded].max()))


class DataPlane:
    def __init__(self, models: ModelManager, metrics: Metrics, limits: Limits) -> None:
        self.models = models
        self.metrics = metrics
        self.limits = limits

    def model(self, name: str = "", version: str = "") -> ServedModel:
        """The loaded bundle `name` (default bundle when empty), `version` (latest when empty)."""
        return self.models.repo.get(name, version)

    def names(self) -> list[str]:
        return self.models.repo.names()

    def versions(self, name: str) -> list[str]:
        return self.models.repo.versions(name)

    async def classify(self, served: ServedModel, x: np.ndarray, guard: bool, deadline: float | None) -> Answers:
        """Queue `x` (N x C x H x W float32) for a batch; its answers once the batch ran."""
        result = await served.batcher.submit(x, guard, deadline)
        return self.answers(served, result)

    def submit_nowait(self, served: ServedModel, x: np.ndarray, guard: bool,
                      deadline: float | None) -> asyncio.Future:
        """Queue `x` now (QueueFullError at once when full); a future of its PipelineResult."""
        return served.batcher.submit_nowait(x, guard, deadline)

    @staticmethod
    def answers(served: ServedModel, result: PipelineResult) -> Answers:
        """The answers for a result, with the call's model and verdict labels set (the batcher
        counted verdicts and flags once per batch, see `runtime.models.verdict_counter`)."""
        labels = call_labels()
        labels.model = served.bundle.name
        labels.verdict = verdict_label(result)
        return Answers(served.pipeline, result)
