"""Parsing `--option KEY=VALUE` pairs into typed config fields."""
from __future__ import annotations

import dataclasses
from typing import Any


def parse_options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option needs KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def _coerce(value: str, target: Any) -> Any:
    if isinstance(target, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(target, int):
        return int(value)
    if isinstance(target, float):
        return float(value)
    if isinstance(target, tuple):
        return tuple(type(target[0])(v) if target else float(v) for v in value.split(","))
    return value


def build_config(cls: type, options: dict[str, str], **fixed: Any):
    """Instantiate the frozen dataclass `cls` from string options, typed by its defaults."""
    defaults = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
                         f"known: {', '.join(sorted(fields))}")
    values = {k: _coerce(v, getattr(defaults, k)) for k, v in options.items()}
    values.update({k: v for k, v in fixed.items() if v is not None})
    return cls(**values)
