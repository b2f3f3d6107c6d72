"""The served models: each loaded bundle version with its batcher, loaded at start-up and kept in
step with the store (hot reload: new version folders are loaded, verified, warmed up and swapped
in; removed ones are drained and dropped; a request never sees a half-loaded model)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.batching import BatchingOptions, DynamicBatcher
from serving.bundle import Bundle, BundleError
from serving.engine import EngineOptions
from serving.metrics import Metrics
from serving.guard import Verdict
from serving.pipeline import Pipeline, PipelineResult
from serving.repository import ModelRepository, load_pipeline

log = logging.getLogger(__name__)


def verdict_counter(metrics: Metrics, name: str) -> Callable[[PipelineResult], None]:
    """Counts a batch's verdicts (and 'unguarded' images) and each detector's flags."""
    verdicts = {v: metrics.verdicts.labels(name, v.name.lower()) for v in Verdict if v != Verdict.UNSPECIFIED}
    unguarded = metrics.verdicts.labels(name, "unguarded")

    def count(result: PipelineResult) -> None:
        n_guarded = int(result.guarded.sum()) if result.guard is not None else 0
        if n_guarded < len(result.classes):
            unguarded.inc(len(result.classes) - n_guarded)
        if not n_guarded:
            return
        guarded = result.guarded
        for value, n in enumerate(np.bincount(result.guard.verdicts[guarded], minlength=len(Verdict)).tolist()):
            if n and value:
                verdicts[Verdict(value)].inc(n)
        for outcome in result.guard.outcomes:
            flagged = int(outcome.flagged[guarded].sum())
            if flagged:
                metrics.flagged.labels(name, outcome.name).inc(flagged)
    return count


@dataclass
class ServedModel:
    pipeline: Pipeline
    batcher: DynamicBatcher

    @property
    def bundle(self) -> Bundle:
        return self.pipeline.bundle


class ModelManager:
    """Owns the repository of served models. Example: `await ModelManager(...).load_all()`."""

    def __init__(self, store: Path, engine: EngineOptions, batching: BatchingOptions, metrics: Metrics,
                 executor: Executor, default_model: str = "") -> None:
        self.repo: ModelRepository[ServedModel] = ModelRepository(store, default_model)
        self.engine = engine
        self.batching = batching
        self.metrics = metrics
        self.executor = executor
        self._refused: dict[Path, float] = {}  # folder -> manifest mtime when it was refused

    def _serve(self, pipeline: Pipeline) -> ServedModel:
        name = pipeline.bundle.name
        batch_size = self.metrics.batch_size.labels(name)
        depth = self.metrics.queue_depth.labels(name)
        batcher = DynamicBatcher(pipeline.steps, self.batching, self.executor,
                                 on_batch=batch_size.observe, on_depth=depth.set,
                                 on_result=verdict_counter(self.metrics, name))
        for f in pipeline.bundle.models:
            self.metrics.model_info.labels(name, pipeline.bundle.version, f.file, f.sha256).set(1)
        self.metrics.model_loads.labels(name, "loaded").inc()
        return ServedModel(pipeline, batcher)

    async def _load(self, folder: Path) -> Pipeline:
        return await asyncio.get_running_loop().run_in_executor(None, load_pipeline, folder, self.engine)

    async def load_all(self) -> None:
        """Load every version of every bundle; any failure is fatal at start-up."""
        new, _ = self.repo.scan()
        if not new:
            raise FileNotFoundError(f"no bundles in {self.repo.store}: build one with `make bundle` "
                                    f"(or `advguard export --run RUN --name NAME --store {self.repo.store}`)")
        for folder in new:
            self.repo.add(self._serve(await self._load(folder)))
            log.info("loaded %s version %s", folder.parent.name, folder.name)

    async def refresh(self) -> tuple[list[str], list[str]]:
        """Load new version folders and drop vanished ones; returns ("name/version" added, removed).
        A folder that fails to load is logged and retried only once its manifest changes."""
        new, gone = self.repo.scan()
        added, removed = [], []
        for folder in new:
            manifest = folder / "manifest.json"
            try:
                mtime = manifest.stat().st_mtime
            except FileNotFoundError:
                continue
            if self._refused.get(folder) == mtime:
                continue
            try:
                pipeline = await self._load(folder)
            except (BundleError, KeyError, ValueError, OSError, RuntimeError) as err:
                self._refused[folder] = mtime
                self.metrics.model_loads.labels(folder.parent.name, "refused").inc()
                log.error("not loading %s: %s", folder, err)
                continue
            self._refused.pop(folder, None)
            self.repo.add(self._serve(pipeline))
            added.append(f"{folder.parent.name}/{folder.name}")
            log.info("hot reload: now serving %s version %s", folder.parent.name, folder.name)
        for name, version in gone:
            served = self.repo.remove(name, version)
            await served.batcher.close()  # finish what it had accepted
            for f in served.bundle.models:
                self.metrics.model_info.remove(name, version, f.file, f.sha256)
            removed.append(f"{name}/{version}")
            log.info("hot reload: %s version %s is gone from the store; unloaded", name, version)
        return added, removed

    async def poll(self, interval: float) -> None:
        """Refresh every `interval` seconds, forever (cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except OSError as err:  # the store itself unreadable for a moment
                log.warning("model store scan failed: %s", err)

    async def close(self) -> None:
        for served in self.repo.entries():
            await served.batcher.close()
