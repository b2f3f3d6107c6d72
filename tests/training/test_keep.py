"""`training.keep`: which files of a run are kept, that save writes only changes, that restore
never overwrites the run's own files, and the CLI's errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.keep import MAX_FILE_BYTES, kept_files, restore, save

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    files = {"config.json": "{}", "pid": "123", "adversarial.pt": "pool", "adversarial/pool.json": "{}",
             "adversarial/train/3-cw/00000.pt": "shard", "adversarial/train/3-cw/00001.claim": "1 host",
             "source/model.pt": "src", "source/last.pt": "src-last", "source/metrics.json": "{}",
             "eat/eat1/share-15/model.pt": "m", "eat/eat1/share-15/metrics.json": "{}",
             "eat/eat1/share-25/last.pt": "in flight", "eat/eat1.claim": "1 host", "helper-1.pid": "9"}
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    return run


def test_kept_files_are_finished_stages_and_the_stage_in_flight_not_the_pool_or_process_files(tmp_path):
    assert [p.as_posix() for p in kept_files(_run(tmp_path))] == [
        "config.json", "eat/eat1/share-15/metrics.json", "eat/eat1/share-15/model.pt", "eat/eat1/share-25/last.pt",
        "source/metrics.json", "source/model.pt"]


def test_save_writes_changes_only_and_restore_keeps_the_runs_own_files(tmp_path):
    run, kept, fresh = _run(tmp_path), tmp_path / "kept", tmp_path / "fresh"
    assert len(save(run, kept)) == 6
    assert save(run, kept) == []
    (run / "eat/eat1/share-25/last.pt").write_text("one epoch later")
    assert [p.as_posix() for p in save(run, kept)] == ["eat/eat1/share-25/last.pt"]

    (fresh / "source").mkdir(parents=True)
    (fresh / "source/model.pt").write_text("the run's own")
    (fresh / "eat/eat1/share-25").mkdir(parents=True)
    (fresh / "eat/eat1/share-25/model.pt").write_text("finished here")
    copied = {p.as_posix() for p in restore(kept, fresh)}
    assert copied == {"config.json", "eat/eat1/share-15/metrics.json", "eat/eat1/share-15/model.pt",
                      "source/metrics.json"}
    assert (fresh / "source/model.pt").read_text() == "the run's own"
    assert not (fresh / "eat/eat1/share-25/last.pt").exists()  # that stage finished in the run

    (run / "eat/eat1/share-25/model.pt").write_text("finished")
    save(run, kept)
    assert not (kept / "eat/eat1/share-25/last.pt").exists() and (kept / "eat/eat1/share-25/model.pt").exists()


def test_a_file_too_large_to_keep_is_refused_with_the_remedy(tmp_path):
    run = _run(tmp_path)
    (run / "source/model.pt").write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="over the 8 MiB a kept file may have"):
        save(run, tmp_path / "kept")


def test_the_cli_names_a_missing_kept_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "training.keep", "restore", str(tmp_path / "none"),
                             str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "holds no kept run (`python -m training.keep save RUN" in result.stderr


def test_leave_out_patterns_skip_and_drop_what_a_finished_run_no_longer_needs(tmp_path):
    run, kept = _run(tmp_path), tmp_path / "kept"
    save(run, kept)
    assert (kept / "eat/eat1/share-15/model.pt").exists()
    save(run, kept, leave_out=("eat/*",))
    assert not (kept / "eat").exists() or not any(p.is_file() for p in (kept / "eat").rglob("*"))
    assert (kept / "source/model.pt").exists()
