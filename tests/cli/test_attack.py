"""`advguard attack` end to end on the shared trained run."""
import json

import numpy as np

from advguard.cli.main import main


def test_attack_saves_images_predictions_success_and_grid(trained_run, tmp_path, capsys):
    out, grid = tmp_path / "adv.npz", tmp_path / "adv.png"
    rc = main(["attack", "--attack", "pgd", "--eps", "0.1", "--model", str(trained_run), "--n", "48",
               "--batch-size", "32", "--option", "steps=5", "--option", "alpha=0.03",
               "--out", str(out), "--grid", str(grid)])
    assert rc == 0
    data = np.load(out)
    assert data["x_adv"].shape == (48, 1, 28, 28) and data["labels"].shape == (48,)
    assert data["x_adv"].min() >= 0 and data["x_adv"].max() <= 1
    assert np.array_equal(data["success"], data["adv_pred"] != data["labels"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["eps"] == 0.1 and record["config"]["steps"] == 5
    assert record["results"]["adversarial_accuracy"] < record["results"]["clean_accuracy"]
    assert grid.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "->" in printed


def test_attack_targeted_and_gma_report(trained_run, tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["attack", "--attack", "fgsm", "--eps", "0.1", "--model", str(trained_run), "--n", "16",
                 "--option", "targeted=true", "--option", "targets=least-likely", "--out", str(out)]) == 0
    data = np.load(out)
    assert np.array_equal(data["success"], data["adv_pred"] == data["targets"])
    out = tmp_path / "g.npz"
    assert main(["attack", "--attack", "gma", "--model", str(trained_run), "--n", "16", "--option",
                 "values=1,3", "--option", "exponents=1", "--option", "tries=1", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [round(s["eps"], 6) for s in record["gma"]["sizes"]] == [0.1, 0.3]
    assert "eps 1.0e-01: accuracy" in capsys.readouterr().out


def test_attack_rejects_eps_for_attacks_without_it(trained_run, tmp_path, capsys):
    rc = main(["attack", "--attack", "cw", "--eps", "0.1", "--model", str(trained_run), "--n", "4",
               "--out", str(tmp_path / "x.npz")])
    assert rc == 2
    assert "--eps does not apply to 'cw'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
