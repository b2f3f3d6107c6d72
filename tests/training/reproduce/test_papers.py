"""`advguard reproduce --paper ... --scale quick`: each paper's pipeline writes its files, with the
expected keys, every table column and numbers in range. Quick numbers prove the pipeline only."""
from __future__ import annotations

import json

import pytest

from tests.support import one_thread

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

PAPERS = ("000", "001", "002", "003", "004")
# keys whose values (or, for "attacks", whose values' values) are shares in [0, 1]
SHARE_KEYS = {"clean", "worst_case", "accuracy", "clean_accuracy", "acc_clean", "acc_attack", "beta", "fooled",
              "true_positive_rate", "false_positive_rate", "slipped_accuracy", "accuracy_11way", "fooled_source",
              "FGSM", "reordered_share", "reduction", "paper_reduction", "test_accuracy"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """All five quick reproductions, run once: {paper: (result, out folder)} plus the runs root."""
    from training.reproduce import reproduce_paper

    root = tmp_path_factory.mktemp("reproduction")
    results = {}
    with one_thread():
        for paper in PAPERS:
            results[paper] = reproduce_paper(paper, "quick", root / "out", runs=root / "runs",
                                             mia_run=root / "no-mia-run")
    return {"results": results, "out": root / "out", "runs": root / "runs"}


def shares(node, key: str | None = None, under_attacks: bool = False):
    """Every number of `node` held under a SHARE_KEYS key or in an 'attacks' mapping."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from shares(v, k, k == "attacks" or k in ("transfer",) or (under_attacks and isinstance(v, dict)))
    elif isinstance(node, list):
        for v in node:
            yield from shares(v, key, under_attacks)
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and (key in SHARE_KEYS or under_attacks):
        yield key, node


@pytest.mark.parametrize("paper", PAPERS)
def test_quick_writes_results_with_every_column(quick, paper):
    from training.reproduce import COLUMNS, ROW_KEYS

    out = quick["out"] / paper
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(quick["results"][paper]))
    assert saved["paper"] == paper and saved["scale"] == "quick" and saved["quick"] is True
    assert saved["columns"] == list(COLUMNS)
    assert len(saved["rows"]) >= 3
    for row in saved["rows"]:
        assert all(isinstance(row[k], str) and row[k] for k in ROW_KEYS), row
    assert saved["verdict"].startswith("none at scale quick")
    text = (out / "results.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in text
    assert "not results" in text
    assert text.count("\n| ") == len(saved["rows"]) + 1  # header + one line per row
    assert saved["plots"]
    for png in saved["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


@pytest.mark.parametrize("paper", PAPERS)
def test_quick_numbers_are_shares_in_range(quick, paper):
    found = list(shares(quick["results"][paper]["measured"]))
    assert len(found) >= 6, found
    bad = [(k, v) for k, v in found if not 0.0 <= v <= 1.0]
    assert not bad, bad


def test_paper000_reports_transfer_white_box_and_table12(quick):
    m = quick["results"]["000"]["measured"]
    assert set(m["transfer"]) == {"base", "filter-finetune", "pgd-at"}
    assert all(set(v) == {"FGSM", "PGD-3"} for v in m["transfer"].values())
    assert round(100 * m["table12_base_10"]["paper_reduction"], 2) == 14.33  # paper 000's Table 12 entry
    assert 0 < m["trainable"]["trainable_parameters"] < m["trainable"]["parameters"] == 120_042
    assert set(m["train_seconds"]) == {"base", "filter-finetune", "pgd-at"}


def test_paper001_attacks_the_logits_as_well(quick):
    attacks = quick["results"]["001"]["measured"]["evaluations"]["distill"]["attacks"]
    assert "FGSM" in attacks
    assert any("margin" in k for k in attacks) and any("logits/T" in k for k in attacks)
    assert any(k.startswith("Square") for k in attacks)


def test_paper002_reads_gma_per_size_and_its_own_quick_mia_run(quick):
    m = quick["results"]["002"]["measured"]
    assert len(m["gma"]["sizes"]) == 25  # Tr(eps): 30 (V, i) pairs, 25 distinct sizes
    assert [s["eps"] for s in m["gma"]["sizes"]] == sorted(s["eps"] for s in m["gma"]["sizes"])
    assert m["mia"]["reduced"] is False and m["mia"]["source"].endswith("mia")
    assert set(m["mia"]["attacks"]) == {"fgsm", "pgd"}


def test_paper002_full_cpu_falls_back_to_the_reduced_run_marked(tmp_path):
    from training.reproduce._common import Context
    from training.reproduce.paper002 import mia_source

    ctx = Context("002", "full-cpu", tmp_path / "out", tmp_path / "runs", mia_run=tmp_path / "unfinished")
    mia = mia_source(ctx, splits=None)
    assert mia["reduced"] is True and "not finished" in mia["full_run_status"]
    assert "RESULTS.md" in mia["source"]


def test_paper002_table_has_one_row_per_figure_in_the_three_columns():
    """Issue 16's table: clean accuracy, false positives, detection per attack (seen and unseen)
    and accuracy on what slips through, each with the paper's claim, ours in the transfer
    setting and ours against the adaptive attacker (on the PGD row, where that attack lives)."""
    from training.reproduce.paper002 import REDUCED_MIA, mia_rows

    rows = mia_rows(REDUCED_MIA, "the reduced run")
    papers = [r["paper"] for r in rows]
    assert papers[0].startswith("clean 10-class accuracy") and papers[1].startswith("false positives")
    assert [p.split(":")[0] for p in papers[2:6]] == ["detection of GMA", "detection of PGD", "detection of FGSM",
                                                       "detection of CW"]
    assert sum("never trained on" in p for p in papers) == 2 and papers[-1].startswith("accuracy on attacked")
    by_paper = {r["paper"].split(":")[0]: r for r in rows}
    assert by_paper["clean 10-class accuracy"]["ours_paper_setting"] == "78.4%"
    assert by_paper["detection of CW"]["ours_paper_setting"] == "45.9% flagged"
    assert "succeeds 72.6%" in by_paper["detection of PGD"]["ours_strong"]
    assert all(r["data"] == "the reduced run" for r in rows[:6])


def test_paper004_measures_both_models_and_our_best_variant(quick):
    m = quick["results"]["004"]["measured"]
    results = m["results"]
    assert set(results) == {"volumized", "undefended", "fixed-occ"}
    assert results["volumized"]["arch"] == results["fixed-occ"]["arch"] == "volumetric"
    for label in results:
        assert set(results[label]["npixel"]) == {"1"} and set(results[label]["patch"]) == {"0.1"}
        assert all(0.0 <= r["beta"] <= 1.0 for kind in ("npixel", "patch") for r in results[label][kind].values())
    variant = results["fixed-occ"]
    assert sorted(variant["fixed_order"]) == list(range(16))  # trained with ranking=fixed: its order recorded
    assert variant["order_sensitivity"]["reordered_share"] == 0.0
    assert m["variant"]["measured"] is True and m["variant"]["options"] == {"ranking": "fixed", "occlusion": "0.5"}
    config = json.loads((quick["runs"] / "004" / "fixed-occ" / "config.json").read_text())
    assert config["defense_config"]["ranking"] == "fixed" and config["defense_config"]["occlusion"] == 0.5
    row = quick["results"]["004"]["rows"][1]["ours_paper_setting"]
    assert "fixed-occ (our best variant) " in row and "Our best variant, fixed-occ" in quick["results"]["004"]["why"]


def test_a_second_run_reuses_every_trained_run_and_stage(quick):
    from training.reproduce import reproduce_paper

    model = quick["runs"] / "003" / "normal" / "model.pt"
    before = model.stat().st_mtime_ns
    with one_thread():
        again = reproduce_paper("003", "quick", quick["out"], runs=quick["runs"])
    assert model.stat().st_mtime_ns == before
    assert again["measured"] == quick["results"]["003"]["measured"]


def test_no_resume_refuses_a_folder_with_runs(quick):
    from training.reproduce import reproduce_paper

    with pytest.raises(ValueError, match="already holds trained runs"):
        reproduce_paper("003", "quick", quick["out"], runs=quick["runs"], resume=False)
