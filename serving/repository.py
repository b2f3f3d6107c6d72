"""The loaded bundles: every version of every bundle in a model store."""
from __future__ import annotations

import logging
from pathlib import Path

from serving.bundle import bundle_names, version_dirs
from serving.pipeline import Pipeline

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """No such bundle name or version is loaded."""


class ModelRepository:
    """name -> version -> Pipeline. `get(name, version)` with empty values picks the default
    bundle (the only one, or the first by name) and its latest version."""

    def __init__(self, store: Path, threads: int = 0) -> None:
        self.store = Path(store)
        self.threads = threads
        self.models: dict[str, dict[str, Pipeline]] = {}

    def load_all(self) -> None:
        for name in bundle_names(self.store):
            for folder in version_dirs(self.store, name):
                self.models.setdefault(name, {})[folder.name] = Pipeline.load(folder, self.threads)
                log.info("loaded %s version %s", name, folder.name)
        if not self.models:
            raise FileNotFoundError(f"no bundles in {self.store}: build one with `make bundle`")

    def names(self) -> list[str]:
        return sorted(self.models)

    def versions(self, name: str) -> list[str]:
        versions = list(self.models.get(name, {}))
        return sorted(versions, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    def get(self, name: str = "", version: str = "") -> Pipeline:
        name = name or (self.names()[0] if self.models else "")
        versions = self.models.get(name)
        if not versions:
            raise UnknownModelError(f"unknown model {name!r}; loaded: {', '.join(self.names()) or 'none'}")
        version = version or self.versions(name)[-1]
        pipeline = versions.get(version)
        if pipeline is None:
            raise UnknownModelError(f"model {name!r} has no version {version!r}; loaded: "
                                    f"{', '.join(self.versions(name))}")
        return pipeline
