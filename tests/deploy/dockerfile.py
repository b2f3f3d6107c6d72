"""A small Dockerfile reader for the deploy tests: instructions by stage, exec-form arguments."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(path: Path) -> list[Stage]:
    """Stages of Dockerfile `path` in order, each with its (KEYWORD, arguments) list."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 and words[1].upper() == "AS" else ""))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def words(args: str) -> list[str]:
    """Exec form (a JSON array) or shell form, as a list of words."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def healthcheck_command(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD ...`."""
    _, _, command = args.partition("CMD ")
    return words(command.strip())
