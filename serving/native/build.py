"""Compile the native front end's extension module (`transport.cc`) into build/native/ on first
use (again when the source is newer), and import it. Needs g++, pkg-config, Debian's libgrpc++
and this Python's headers; `ToolchainMissing` names the packages to install.

Example: `transport = load_extension()`; `port = transport.start("127.0.0.1:0", 64 << 20, [...], None, 0, "", "")`.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("transport.cc")
BUILD = Path(__file__).resolve().parents[2] / "build" / "native"
NAME = "_transport"
PACKAGES = "g++ pkg-config libgrpc++-dev (and python3-dev for a Debian Python)"


class ToolchainMissing(RuntimeError):
    """What the build needs and is not installed."""


def missing() -> str | None:
    """What is missing to build the extension (None: nothing)."""
    tools = [tool for tool in ("g++", "pkg-config") if shutil.which(tool) is None]
    if tools:
        return f"{', '.join(tools)} not found"
    if subprocess.run(["pkg-config", "--exists", "grpc++"], check=False).returncode:
        return "grpc++ unknown to pkg-config"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return f"Python.h not found in {sysconfig.get_paths()['include']}"
    return None


def extension_path() -> Path:
    return BUILD / f"{NAME}{sysconfig.get_config_var('EXT_SUFFIX')}"


def build() -> Path:
    """The compiled module's path, compiled if missing or older than its source."""
    target = extension_path()
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    why = missing()
    if why:
        raise ToolchainMissing(f"cannot build the native front end ({why}): apt-get install {PACKAGES}, "
                               "or `make native-tools`; or serve with --front grpc")
    BUILD.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], check=True, capture_output=True,
                           text=True).stdout.split()
    partial = target.with_suffix(".partial")
    subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", f"-I{sysconfig.get_paths()['include']}",
                    str(SOURCE), "-o", str(partial), *flags], check=True)
    partial.replace(target)  # a half-written module is never imported
    return target


def load_extension() -> ModuleType:
    """The `_transport` module (built first if needed)."""
    spec = importlib.util.spec_from_file_location(NAME, build())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
