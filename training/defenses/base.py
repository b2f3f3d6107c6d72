"""The defence interface and registry: `create_defense("pgd-at", {"eps": "0.1"}).fit(...)`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

from training.data import Splits
from training.options import build_config
from training.trainer import TrainConfig

_DEFENSES: dict[str, type["Defense"]] = {}


@dataclass(frozen=True)
class DefenseConfig:
    """Fields shared by defences; each defence subclasses this with its own."""


class Defense(ABC):
    """One role, one verb: `fit(model_name, splits, train_config, out_dir) -> metrics`.

    Implementations write, like every trainer, model.pt, last.pt (resume), config.json and
    metrics.json (with wall time) into `out_dir`, usually through `training.trainer.fit`.
    """

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    name: ClassVar[str] = "defense"

    def __init__(self, config: DefenseConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def describe(self) -> dict:
        return {"defense": self.name, "defense_config": asdict(self.config)}

    @abstractmethod
    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        """Train and return the metrics dict."""


def register_defense(name: str) -> Callable[[type[Defense]], type[Defense]]:
    def wrap(cls: type[Defense]) -> type[Defense]:
        if name in _DEFENSES:
            raise ValueError(f"defence {name!r} registered twice")
        cls.name = name
        _DEFENSES[name] = cls
        return cls

    return wrap


def known_defenses() -> list[str]:
    return sorted(_DEFENSES)


def create_defense(name: str, options: dict[str, str] | None = None) -> Defense:
    """Build a registered defence from string options (`--option key=value`)."""
    cls = _DEFENSES.get(name)
    if cls is None:
        raise KeyError(f"unknown defence {name!r}; known: {', '.join(known_defenses()) or 'none'}")
    return cls(build_config(cls.Config, options or {}))
