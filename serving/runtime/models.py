"""The served models (Triton's model repository and manager, in one place): every version of
every bundle in a model store, loaded at start-up and kept in step with the store by hot reload
(new version folders are loaded, verified, warmed up and swapped in; removed ones are drained
and dropped; a request never sees a half-loaded model).

Readers never lock: every change builds a new mapping and replaces the old one in a single
assignment, so a request sees either the old set of models or the new one, never half of each.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from serving.bundle import Bundle, BundleError, bundle_names, version_dirs
from serving.engine import EngineOptions
from serving.errors import UnknownModelError
from serving.guard import Verdict
from serving.metrics import Metrics
from serving.pipeline import Pipeline, PipelineResult
from serving.runtime.batcher import BatchingOptions, DynamicBatcher

log = logging.getLogger(__name__)


class HasBundle(Protocol):
    bundle: Bundle


Entry = TypeVar("Entry", bound=HasBundle)


def version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def load_pipeline(folder: Path, engine: EngineOptions | None = None) -> Pipeline:
    """Load, verify and warm up the bundle in `folder` (`<store>/<name>/<version>`); the folder's
    name and version must match the manifest's."""
    pipeline = Pipeline.load(folder, engine)
    bundle = pipeline.bundle
    if (bundle.name, bundle.version) != (folder.parent.name, folder.name):
        raise BundleError(f"{folder}: manifest says {bundle.name} version {bundle.version}; a bundle "
                          f"lives in <store>/<name>/<version>/ with the manifest's name and version")
    pipeline.warm_up()
    return pipeline


class ModelRepository(Generic[Entry]):
    """name -> version -> entry (a Pipeline, or the server's wrapper around one).

    `get(name, version)` with empty values picks the default bundle (`default_model`, else the
    first by name) and its latest version (highest number)."""

    def __init__(self, store: Path, default_model: str = "") -> None:
        self.store = Path(store)
        self.default_model = default_model
        self.models: dict[str, dict[str, Entry]] = {}

    def scan(self) -> tuple[list[Path], list[tuple[str, str]]]:
        """(version folders on disk not loaded yet, loaded (name, version)s gone from disk)."""
        on_disk = {(folder.parent.name, folder.name): folder
                   for name in bundle_names(self.store) for folder in version_dirs(self.store, name)}
        loaded = {(name, version) for name, versions in self.models.items() for version in versions}
        new = [folder for key, folder in sorted(on_disk.items()) if key not in loaded]
        return new, sorted(loaded - set(on_disk))

    def add(self, entry: Entry) -> None:
        bundle = entry.bundle
        models = {name: dict(versions) for name, versions in self.models.items()}
        models.setdefault(bundle.name, {})[bundle.version] = entry
        self.models = models

    def remove(self, name: str, version: str) -> Entry:
        models = {n: dict(v) for n, v in self.models.items()}
        entry = models[name].pop(version)
        if not models[name]:
            del models[name]
        self.models = models
        return entry

    def entries(self) -> list[Entry]:
        return [e for versions in self.models.values() for e in versions.values()]

    def names(self) -> list[str]:
        return sorted(self.models)

    def versions(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=version_key)

    def default_name(self) -> str:
        if self.default_model and self.default_model in self.models:
            return self.default_model
        names = self.names()
        return names[0] if names else ""

    def get(self, name: str = "", version: str = "") -> Entry:
        models = self.models  # one snapshot for the whole lookup
        name = name or self.default_name()
        versions = models.get(name)
        if not versions:
            raise UnknownModelError(f"unknown model {name!r}; loaded: {', '.join(sorted(models)) or 'none'}")
        if not version:
            version = max(versions, key=version_key)
        entry = versions.get(version)
        if entry is None:
            raise UnknownModelError(f"model {name!r} has no version {version!r}; loaded: "
                                    f"{', '.join(sorted(versions, key=version_key))}")
        return entry


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
