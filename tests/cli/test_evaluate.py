"""`advguard evaluate` end to end on the shared trained run."""
import json

from advguard.cli.main import main


def test_evaluate_writes_the_pgd40_report(trained_run, tmp_path):
    assert main(["evaluate", "--model", str(trained_run), "--suite", "pgd40", "--restarts", "2", "--n", "32",
                 "--limit-test", "32", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [a["label"] for a in saved["attacks"]] == ["PGD-40 CE x2"]
    assert saved["attacks"][0]["robust_accuracy"] < saved["clean_accuracy"]
