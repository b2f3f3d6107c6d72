"""`advguard <command> --help` lists the names the registries know, not a hand-kept copy."""
import pytest

from advguard.cli.main import main


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: a name like feature-squeezing stays whole
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_attack_help_lists_every_registered_attack(capsys, monkeypatch):
    from training.attacks import known_attacks

    text = _help(["attack"], capsys, monkeypatch)
    assert all(name in text for name in known_attacks()), text


def test_train_help_lists_every_defence_and_model(capsys, monkeypatch):
    from training.defenses import known_defenses
    from training.models import known_models

    text = _help(["train"], capsys, monkeypatch)
    assert all(name in text for name in [*known_defenses(), *known_models()]), text
    assert "volumized" in text and "volumetric" in text


def test_evaluate_help_lists_every_suite(capsys, monkeypatch):
    from training.evaluate import SUITES

    text = _help(["evaluate"], capsys, monkeypatch)
    assert all(name in text for name in [*SUITES, "distill"]), text


def test_export_help_lists_every_detector(capsys, monkeypatch):
    from serving.guard import known_detectors

    text = _help(["export"], capsys, monkeypatch)
    assert all(name in text for name in known_detectors()), text


def test_an_unregistered_attack_is_refused_with_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exit:
        main(["attack", "--attack", "pgdd", "--model", "x", "--out", "x.npz"])
    assert exit.value.code == 2
    assert "invalid choice: 'pgdd'" in capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly(defended_bundle):
    """`advguard card BUNDLE | head -1`: the reader leaves first; no traceback, exit code 0."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-m", "advguard.cli.main", "card", str(defended_bundle)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2])
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
