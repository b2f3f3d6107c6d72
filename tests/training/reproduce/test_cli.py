"""`advguard reproduce`: --paper and the older `defenses` / `filters` forms share one parser."""
import pytest

from advguard.cli.main import build_parser, main

pytest.importorskip("torch")


def test_paper_and_defenses_forms_both_parse():
    args = build_parser("reproduce").parse_args(["reproduce", "--paper", "003", "--scale", "quick"])
    assert (args.paper, args.scale, args.what) == ("003", "quick", None)
    args = build_parser("reproduce").parse_args(["reproduce", "defenses", "--scale", "reduced"])
    assert (args.paper, args.scale, args.what) == (None, "reduced", "defenses")


@pytest.mark.parametrize("argv", [["reproduce"], ["reproduce", "defenses", "--paper", "000"],
                                  ["reproduce", "--paper", "000", "--scale", "reduced"],
                                  ["reproduce", "defenses", "--scale", "quick"]])
def test_mixed_or_missing_forms_are_refused_with_the_fix(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_the_reported_command_names_a_non_default_mia_run():
    """A table read from another MIA run says so in its command, so that rerunning it reads the same run."""
    from pathlib import Path

    from training.reproduce._common import Context

    def command(paper, **kw):
        return Context(paper, "full-cpu", Path("reproduction") / paper, Path("runs/r"), **kw).command()

    assert command("002") == "advguard reproduce --paper 002 --scale full-cpu --out reproduction"
    assert command("002", mia_run=Path("runs/mia-full-cpu")).endswith(" --mia-run runs/mia-full-cpu")
    assert "--mia-run" not in command("004", mia_run=Path("runs/mia-full-cpu"))
