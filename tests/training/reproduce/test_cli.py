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
