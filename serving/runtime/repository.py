"""The model repository (Triton's): name -> version -> entry, replaced whole on every change.

Readers never lock: every change builds a new mapping and replaces the old one in a single
assignment, so a request sees either the old set of models or the new one, never half of each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Generic, Protocol, TypeVar

from serving.bundle import Bundle
from serving.errors import UnknownModelError


class HasBundle(Protocol):
    bundle: Bundle


Entry = TypeVar("Entry", bound=HasBundle)


def version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository(Generic[Entry]):
    """name -> version -> entry (a Pipeline, or the server's wrapper around one).

    `get(name, version)` with empty values picks the default bundle (`default_model`, else the
    first by name) and its latest version (highest number)."""

    def __init__(self, store: Path, default_model: str = "") -> None:
        self.store = Path(store)
        self.default_model = default_model
        self.models: dict[str, dict[str, Entry]] = {}

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
