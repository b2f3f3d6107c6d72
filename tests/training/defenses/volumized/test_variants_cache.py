"""`python -m training.defenses.volumized.variants` caches every chunk under the model's weights:
a rerun (in another checkout too, with the same weights) reads the cache and attacks nothing,
and other weights under the same label start a cache of their own."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.checkpoint import load_model, model_sha256, save_model

pytestmark = pytest.mark.usefixtures("one_thread_module")
ARGS = ["--n", "4", "--pixels", "1", "--patch-scales", "", "--npixel-options", "popsize=4;steps=1", "--chunk", "2"]


def test_chunks_are_cached_under_the_weights_and_reused_only_for_them(train_volumized, tmp_path):
    from training.defenses.volumized.variants import main, progress

    _, run, _ = train_volumized("variants-cache", {"ranking": "fixed", "order_images": "100", "pacing": "none"},
                                sizes=(100, 20, 4), epochs=1, batch_size=50)
    out = tmp_path / "eval"
    assert main(["--model", f"v={run}", "--out", str(out), *ARGS]) == 0
    model, spec = load_model(run)
    folder = out / "cache" / "v" / model_sha256(model)[:16]
    names = sorted(p.name for p in folder.iterdir())  # npixel1-OPTIONS-START-END.json, one per chunk of 2
    assert len(names) == 2 and all(n.startswith("npixel1-") for n in names)
    assert [n.rsplit("-", 2)[1:] for n in names] == [["0", "2.json"], ["2", "4.json"]]
    first = json.loads((out / "results.json").read_text())["results"]["v"]["npixel"]
    (row,) = progress(out)  # the work so far, read off the cache alone
    assert (row["label"], row["weights"], row["pixels"], row["images"]) == ("v", folder.name, 1, 4)
    assert 0 <= row["still_right"] <= 4 and row["cpu_seconds"] > 0

    kept = tmp_path / "kept-eval"  # the committed copy in a fresh checkout
    shutil.copytree(out, kept)
    assert main(["--model", f"v={run}", "--out", str(kept), "--cached-only", *ARGS]) == 0
    assert json.loads((kept / "results.json").read_text())["results"]["v"]["npixel"] == first

    with torch.no_grad():  # other weights, same label: nothing of the cache is theirs
        next(model.parameters()).add_(0.01)
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    save_model(other / "model.pt", model, spec)
    assert main(["--model", f"v={other}", "--out", str(kept), "--cached-only", *ARGS]) == 0
    assert json.loads((kept / "results.json").read_text())["results"]["v"]["npixel"] == {}
