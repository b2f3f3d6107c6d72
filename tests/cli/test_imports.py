"""The command line's import boundaries: `advguard serve` and `advguard classify` never import
torch, and the libraries (`training`, `serving`) never import `advguard.cli`."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("training", "serving")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_serve_builds_its_parser_and_settings_without_torch():
    done = _python(
        "import sys\n"
        "from advguard.cli.main import build_parser\n"
        "from advguard.cli.serve import settings_from_args\n"
        "args = build_parser('serve').parse_args(['serve', '--store', 'model_store', '--port', '0'])\n"
        "settings_from_args(args)\n"
        "import serving.grpc.server\n"
        "assert args._run.__module__ == 'advguard.cli.serve', args._run\n"
        "assert 'torch' not in sys.modules, 'advguard serve imported torch'\n")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["classify", "--help"]])
def test_help_of_the_serving_side_does_not_import_torch(argv):
    done = _python(
        "import sys\n"
        "from advguard.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'torch' not in sys.modules, 'imported torch'\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: advguard" in done.stdout


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_library_module_imports_the_command_line_even_lazily():
    offenders = [str(path.relative_to(ROOT)) for lib in LIBRARIES for path in sorted((ROOT / lib).rglob("*.py"))
                 if any(name == "advguard" or name.startswith("advguard.") for name in _imported_names(path))]
    assert offenders == []


def test_importing_every_library_module_leaves_advguard_cli_unimported():
    done = _python(
        "import importlib, pkgutil, sys\n"
        "failed = []\n"
        f"for lib in {LIBRARIES!r}:\n"
        "    package = importlib.import_module(lib)\n"
        "    for info in pkgutil.walk_packages(package.__path__, lib + '.'):\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except ImportError as err:\n"
        "            failed.append(f'{info.name}: {err}')\n"
        "cli = sorted(m for m in sys.modules if m == 'advguard.cli' or m.startswith('advguard.cli.'))\n"
        "assert not cli, cli\n"
        "assert not [f for f in failed if 'advguard' in f], failed\n"
        "print(len(failed), 'not importable here:', failed)\n")
    assert done.returncode == 0, done.stderr[-3000:]
