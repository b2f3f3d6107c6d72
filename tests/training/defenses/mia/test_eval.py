"""`python -m training.defenses.mia.eval`: unseen attacks made against the source model (early,
with --craft-only, or during the evaluation) and the adaptive attacker, on the small run."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_unseen_attacks_are_crafted_before_the_pool_and_the_evaluation_uses_them(mia_reference, tmp_path):
    """`mia.eval --craft-only --n N` needs only the source model (a run still making its pool);
    the evaluation of the finished run takes those shards as they are."""
    import shutil

    from training.defenses.mia.eval import main as evaluate

    ref_out, _ = mia_reference
    early = tmp_path / "early"
    shutil.copytree(ref_out / "source", early / "source")
    shutil.copy(ref_out / "config.json", early / "config.json")
    out = tmp_path / "eval"
    args = ["--n", "8", "--unseen", "square:eps=0.1;max_queries=20", "--adaptive-steps", "3", "--out", str(out)]
    with pytest.raises(SystemExit, match="has not finished its adversarial pool.*--craft-only --n N"):
        evaluate(["--run", str(early), *args])
    assert evaluate(["--run", str(early), "--craft-only", *args]) == 0
    shard = next(out.glob("unseen/*square*/00000.pt"))
    made = shard.stat().st_mtime_ns

    assert evaluate(["--run", str(ref_out), *args]) == 0
    assert shard.stat().st_mtime_ns == made  # taken as it was, not remade
    report = json.loads((out / "eval.json").read_text())
    assert report["clean_images"] == 8 and report["detection"]["attacks"]["square"]["unseen"] is True
    assert report["adaptive"]["images"] == 8
