"""`advguard` command line: data, train, attack, evaluate, export, bundle, card, serve, classify, reproduce.

Every subcommand is a module of `advguard.cli` with one shape: `HELP` (its line in this list),
`add_arguments(parser)` and `run(args) -> exit code`. Only the subcommand being run gets its
full parser: the training subcommands import their registries (torch) to list the registered
attacks, defences, models and suites in `--help`, while `advguard serve` and `advguard classify`
never import torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

SUBCOMMANDS = ("data", "train", "attack", "evaluate", "export", "bundle", "card", "serve", "classify", "reproduce")


def subcommand(name: str) -> ModuleType:
    """The module of subcommand `name` (`advguard.cli.<name>`)."""
    return importlib.import_module(f"advguard.cli.{name}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `advguard` parser, with the full arguments of `command` only (None: of none)."""
    parser = argparse.ArgumentParser(prog="advguard", description=__doc__.split("\n\n")[0],
                                     epilog="`advguard COMMAND --help`: its flags, with the registered names it accepts.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        module = subcommand(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)  # not `run`: export has a --run flag
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args._run(args) or 0
    except BrokenPipeError:  # the output went into `head` or the like, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"advguard {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
