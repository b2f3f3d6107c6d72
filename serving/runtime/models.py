"""The served models (Triton's model manager): every version of every bundle in a model store,
loaded at start-up into a `ModelRepository` and kept in step with the store by hot reload. A
version folder is loaded (verified, its labels checked against its models' outputs, warmed up)
and swapped in whenever its files change, so a version copied file by file is retried until it
verifies and one overwritten in place is verified again; a version is dropped only when its
folder is gone from a store that could be listed; a request never sees a half-loaded model.
Each served version runs its batches on threads of its own.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.bundle import Bundle, BundleChecks, BundleError, load_bundle
from serving.engine import EngineOptions
from serving.guard import Verdict
from serving.metrics import Metrics
from serving.pipeline import Pipeline, PipelineResult
from serving.runtime.batcher import BatchingOptions, DynamicBatcher
from serving.runtime.repository import ModelRepository
from serving.runtime.store import StoreUnavailableError, survey

log = logging.getLogger(__name__)


def load_pipeline(folder: Path, engine: EngineOptions | None = None, checks: BundleChecks | None = None,
                  same_as: Bundle | None = None) -> Pipeline | None:
    """Load, verify and warm up the bundle in `folder` (`<store>/<name>/<version>`); the folder's
    name and version must match the manifest's, and its models' outputs its labels. None when the
    folder, verified again, still holds `same_as` (the same manifest bytes)."""
    bundle = load_bundle(folder, checks=checks)
    if same_as is not None and bundle.manifest_sha256 == same_as.manifest_sha256:
        return None
    if (bundle.name, bundle.version) != (folder.parent.name, folder.name):
        raise BundleError(f"{folder}: manifest says {bundle.name} version {bundle.version}; a bundle "
                          f"lives in <store>/<name>/<version>/ with the manifest's name and version")
    pipeline = Pipeline.from_bundle(bundle, engine)  # refuses models whose outputs do not match the labels
    pipeline.warm_up()
    return pipeline


def verdict_counter(metrics: Metrics, name: str) -> Callable[[PipelineResult], None]:
    """Counts a batch's verdicts (and 'unguarded' images) and each detector's flags."""
    by_value = [None] + [metrics.verdicts.labels(name, v.name.lower()) for v in Verdict if v != Verdict.UNSPECIFIED]
    unguarded = metrics.verdicts.labels(name, "unguarded")
    flags: dict[str, object] = {}

    def count(result: PipelineResult) -> None:  # once per batch on the request path: few array operations
        n = len(result.classes)
        n_guarded = int(np.count_nonzero(result.guarded)) if result.guard is not None else 0
        if n_guarded < n:
            unguarded.inc(n - n_guarded)
        if not n_guarded:
            return
        every = n_guarded == n
        verdicts = result.guard.verdicts if every else result.guard.verdicts[result.guarded]
        for value, k in enumerate(np.bincount(verdicts, minlength=len(Verdict)).tolist()):
            if k and value:
                by_value[value].inc(k)
        for outcome in result.guard.outcomes:
            flagged = int(np.count_nonzero(outcome.flagged if every else outcome.flagged[result.guarded]))
            if flagged:
                counter = flags.get(outcome.name)
                if counter is None:
                    counter = flags[outcome.name] = metrics.flagged.labels(name, outcome.name)
                counter.inc(flagged)
    return count


@dataclass
class ServedModel:
    """A served bundle version: its pipeline, its batcher, and its own model threads (one per
    instance), so a large batch of one model never holds up another's."""

    pipeline: Pipeline
    batcher: DynamicBatcher
    executor: ThreadPoolExecutor | None = None
    fingerprint: str = ""  # of its folder when it was loaded (serving.runtime.store)

    @property
    def bundle(self) -> Bundle:
        return self.pipeline.bundle


# what a bundle that fails to load raises (anything else is a bug, and is logged as one)
LOAD_ERRORS = (BundleError, KeyError, ValueError, TypeError, OSError, RuntimeError)


class ModelManager:
    """Owns the repository of served models and keeps it in step with the store.
    Example: `await ModelManager(store, engine, batching, metrics).load_all()`.

    Hot reload (`refresh`, every `poll` interval): a version folder is (re)loaded whenever its
    fingerprint changes (a version copied file by file is retried until it verifies; one
    overwritten in place is verified again and swapped in); a folder that failed is retried only
    once it changes. A version is unloaded only when its folder is gone from a store that could
    be listed: a store missing or unreadable for a moment unloads nothing. A replaced or removed
    version keeps answering calls that looked it up for `retire_seconds`, then is drained."""

    def __init__(self, store: Path, engine: EngineOptions, batching: BatchingOptions, metrics: Metrics,
                 default_model: str = "", checks: BundleChecks | None = None, retire_seconds: float = 5.0) -> None:
        self.repo: ModelRepository[ServedModel] = ModelRepository(store, default_model)
        self.engine = engine
        self.batching = batching
        self.metrics = metrics
        self.checks = checks or BundleChecks()
        self.retire_seconds = retire_seconds
        self._refused: dict[Path, str] = {}  # folder -> its fingerprint when it was refused
        self._retiring: dict[asyncio.Task, ServedModel] = {}

    def _serve(self, pipeline: Pipeline, fingerprint: str) -> ServedModel:
        bundle = pipeline.bundle
        name = bundle.name
        executor = ThreadPoolExecutor(max_workers=self.batching.instances,
                                      thread_name_prefix=f"advguard-model-{name}-{bundle.version}")
        batch_size = self.metrics.batch_size.labels(name)
        depth = self.metrics.queue_depth.labels(name)
        batcher = DynamicBatcher(pipeline.steps, self.batching, executor,
                                 on_batch=batch_size.observe, on_depth=depth.set,
                                 on_result=verdict_counter(self.metrics, name))
        for f in bundle.models:
            self.metrics.model_info.labels(name, bundle.version, f.file, f.sha256).set(1)
        self.metrics.model_loads.labels(name, "loaded").inc()
        return ServedModel(pipeline, batcher, executor, fingerprint)

    async def _load(self, folder: Path, same_as: Bundle | None = None) -> Pipeline | None:
        return await asyncio.get_running_loop().run_in_executor(
            None, load_pipeline, folder, self.engine, self.checks, same_as)

    async def load_all(self) -> None:
        """Load every version of every bundle; any failure is fatal at start-up."""
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, survey, self.repo.store)
        except StoreUnavailableError:
            found = None
        if not found or not found.versions:
            raise FileNotFoundError(f"no bundles in {self.repo.store}: build one with `make bundle` "
                                    f"(or `advguard export --run RUN --name NAME --store {self.repo.store}`)")
        for key, folder in sorted(found.versions.items()):
            self.repo.add(self._serve(await self._load(folder), found.fingerprints[key]))
            log.info("loaded %s version %s", *key)

    async def refresh(self) -> tuple[list[str], list[str]]:
        """Bring the served set in step with the store; returns ("name/version" loaded or
        reloaded, unloaded)."""
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, survey, self.repo.store)
        except StoreUnavailableError as err:
            self.metrics.store_scan_failures.inc()
            log.warning("%s; keeping the %d loaded versions until it can be listed again",
                        err.strerror, len(self.repo.entries()))
            return [], []
        added, removed = [], []
        folders = set(found.versions.values())
        self._refused = {f: fp for f, fp in self._refused.items() if f in folders}
        for key, folder in sorted(found.versions.items()):
            fingerprint = found.fingerprints[key]
            served = self.repo.models.get(key[0], {}).get(key[1])
            if not fingerprint or (served is not None and served.fingerprint == fingerprint) \
                    or self._refused.get(folder) == fingerprint:
                continue
            try:
                pipeline = await self._load(folder, served.bundle if served is not None else None)
            except LOAD_ERRORS as err:
                self._refused[folder] = fingerprint
                self.metrics.model_loads.labels(key[0], "refused").inc()
                log.error("not loading %s%s: %s", folder,
                          " (still serving the copy loaded before it changed)" if served is not None else "", err)
                continue
            self._refused.pop(folder, None)
            if pipeline is None:  # touched, not changed: the same manifest, every file verified again
                served.fingerprint = fingerprint
                continue
            new = self._serve(pipeline, fingerprint)
            self.repo.add(new)  # one assignment: calls see the old copy or the new one
            added.append("/".join(key))
            if served is None:
                log.info("hot reload: now serving %s version %s", *key)
            else:
                self._drop_info(served, keep=new)
                self._retire(served)
                log.info("hot reload: %s version %s changed in place; now serving the new copy", *key)
        for name, versions in list(self.repo.models.items()):
            for version in list(versions):
                if name in found.unreadable or (name, version) in found.present:
                    continue
                served = self.repo.remove(name, version)
                self._drop_info(served)
                self._retire(served)
                removed.append(f"{name}/{version}")
                log.info("hot reload: %s version %s is gone from the store; unloaded", name, version)
        return added, removed

    def _drop_info(self, served: ServedModel, keep: ServedModel | None = None) -> None:
        bundle = served.bundle
        kept = {(f.file, f.sha256) for f in keep.bundle.models} if keep is not None else set()
        for f in bundle.models:
            if (f.file, f.sha256) not in kept:
                try:
                    self.metrics.model_info.remove(bundle.name, bundle.version, f.file, f.sha256)
                except KeyError:
                    pass

    def _retire(self, served: ServedModel) -> None:
        """Drain `served` once calls that looked it up before it was replaced have queued."""
        task = asyncio.get_running_loop().create_task(self._retire_later(served))
        self._retiring[task] = served
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _retire_later(self, served: ServedModel) -> None:
        await asyncio.sleep(self.retire_seconds)
        await self._shut(served)

    @staticmethod
    async def _shut(served: ServedModel) -> None:
        await served.batcher.close()  # finish what it had accepted
        if served.executor is not None:
            served.executor.shutdown(wait=False)  # idle now: its threads exit

    async def poll(self, interval: float, on_change: Callable[[bool], Awaitable[None]] | None = None) -> None:
        """Refresh every `interval` seconds, forever (cancel to stop); `on_change(serving)` is
        awaited when the store goes from some loaded model to none, or back."""
        serving = bool(self.repo.models)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the poller must outlive one bad round
                self.metrics.store_scan_failures.inc()
                log.exception("model store refresh failed")
            now = bool(self.repo.models)
            if now != serving and on_change is not None:
                serving = now
                await on_change(now)

    async def drained(self) -> None:
        """Wait until every version replaced or removed so far has been drained."""
        await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        """Drain every served and retiring model, and stop their threads."""
        retiring = list(self._retiring.values())
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(self._shut(s) for s in retiring + self.repo.entries()))
