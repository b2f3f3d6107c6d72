"""The robustness card: `evaluate_bundle(path, config) -> dict`, the evaluation of a whole
defended bundle that its manifest carries under `robustness`.

Every figure is the *served* answer: adversarial images are made on the bundle's PyTorch twin
(checked equal to ONNX Runtime first) and then classified by the serving pipeline itself
(`serving.pipeline.Pipeline`, ONNX Runtime), exactly as a caller would get them.

Rows (L-inf at `eps` unless named):
- clean: served-answer accuracy and the verdict's false-positive rate;
- non-adaptive, the attacker ignores the guard: FGSM, PGD CE and margin with restarts, CW-L2 —
  all against the primary alone; FGSM and PGD again at each `sweep` eps (for the plot);
- black-box: Square on the served answer (only its probabilities), the masked-gradient check;
- adaptive: `training.evaluate.adaptive` variants, each with `restarts`, and their per-image
  worst case; then the per-image worst case over every row at `eps`.
Per row: served accuracy, share flagged, detection among successful attacks (the primary was
fooled), and right-or-flagged. `rows="detection"` keeps only the FGSM and PGD CE rows (at `eps`
and each `sweep` eps): a detector's true-positive rate on a whole test set at a fraction of the
card's cost; its adaptive worst case and masking check are then not measured (None).
"""
from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from serving.bundle import load_bundle
from serving.guard import Verdict
from serving.pipeline import Pipeline
from training.attacks import create_attack
from training.evaluate.adaptive import VARIANTS, adaptive_pgd
from training.evaluate.card_config import GMA_ROW, PROFILES, ROW_SETS, CardConfig  # noqa: F401 (re-exported)
from training.evaluate.card_jobs import start_helpers
from training.evaluate.card_shards import Served, ShardRow, ShardStore, shard_key
from training.evaluate.twin import BundleTwin

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-3
CLAIM_POLL_SECONDS = 10.0


class ServedBlackBox(nn.Module):
    """The served pipeline as a score-only model: log of the served probabilities, no gradient."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.pipeline.run(x.detach().numpy().astype(np.float32)).probs
        return torch.log(torch.from_numpy(probs).clamp_min(1e-12))


def served(pipeline: Pipeline, x: np.ndarray, y: np.ndarray, batch_size: int) -> Served:
    correct, flagged, primary = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32), y[i:i + batch_size]
        result = pipeline.run(xb)
        correct.append(result.classes == yb)
        flagged.append(result.guard.verdicts == Verdict.ADVERSARIAL if result.guard is not None
                       else np.zeros(len(xb), dtype=bool))
        primary.append(pipeline.primary.logits(xb).argmax(axis=1) == yb)
    return Served(np.concatenate(correct), np.concatenate(flagged), np.concatenate(primary))


def row(label: str, kind: str, params: dict, s: Served, clean: Served, seconds: float) -> dict:
    """One card row; 'successful' = the primary was right on the clean image and is fooled now."""
    success = clean.primary_correct & ~s.primary_correct
    return {"label": label, "kind": kind, "params": params, "n": int(len(s.correct)),
            "served_accuracy": round(float(s.correct.mean()), 4), "flagged": round(float(s.flagged.mean()), 4),
            "primary_accuracy": round(float(s.primary_correct.mean()), 4),
            "successful": int(success.sum()),
            "detected_among_successful": round(float(s.flagged[success].mean()), 4) if success.any() else None,
            "right_or_flagged": round(float((s.correct | s.flagged).mean()), 4), "seconds": round(seconds, 1)}


def _batched(attack, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate_shard(pipeline: Pipeline, twin: BundleTwin, x: torch.Tensor, y: torch.Tensor,
                   config: CardConfig) -> list[ShardRow]:
    """Every card row on one shard of images: the clean row first, then each attack in card order."""
    xn, yn, bs = x.numpy(), y.numpy(), config.batch_size
    rows = [ShardRow("clean", "clean", {}, served(pipeline, xn, yn, bs), 0.0)]

    def run(label: str, kind: str, params: dict, make) -> None:
        t = time.perf_counter()
        x_adv = make()
        rows.append(ShardRow(label, kind, params, served(pipeline, x_adv.numpy(), yn, bs), time.perf_counter() - t))
        log.info("card shard of %d images: %s in %.0f s, served accuracy %.3f", len(yn), label, rows[-1].seconds,
                 rows[-1].served.correct.mean())

    primary = twin.primary
    eps, steps, restarts = config.eps, config.pgd_steps, config.restarts
    cw = {"steps": config.cw_steps, "binary_steps": config.cw_binary_steps}
    if config.rows == "cw-gma":
        run("CW-L2", "non-adaptive", {**cw, "norm": "l2"}, lambda: _batched(create_attack("cw", primary, **cw), x, y, bs))
        run("GMA (paper 002)", "non-adaptive", GMA_ROW,
            lambda: _batched(create_attack("gma", primary, tries=GMA_ROW["tries"]), x, y, bs))
        return rows
    for e in (eps, *config.sweep):
        run(f"FGSM eps={e:g}", "non-adaptive", {"eps": e},
            lambda e=e: _batched(create_attack("fgsm", primary, eps=e), x, y, bs))
        pgd = {"eps": e, "alpha": 2.5 * e / steps, "steps": steps, "restarts": restarts}
        run(f"PGD-{steps} CE x{restarts} eps={e:g}", "non-adaptive", pgd,
            lambda pgd=pgd: _batched(create_attack("pgd", primary, **pgd), x, y, bs))
    if config.rows == "detection":
        return rows
    margin_params = {"eps": eps, "alpha": 2.5 * eps / steps, "steps": steps, "restarts": restarts, "loss": "margin"}
    run(f"PGD-{steps} margin x{restarts} eps={eps:g}", "non-adaptive", margin_params,
        lambda: _batched(create_attack("pgd", primary, **margin_params), x, y, bs))
    run("CW-L2", "non-adaptive", {**cw, "norm": "l2"}, lambda: _batched(create_attack("cw", primary, **cw), x, y, bs))
    square = {"eps": eps, "max_queries": config.square_queries}
    run(f"Square {config.square_queries}q (served answer)", "black-box", square,
        lambda: _batched(create_attack("square", ServedBlackBox(pipeline), **square), x, y, bs))
    for variant in VARIANTS:
        for penalty in (config.penalties if variant == "evade" else (0.0,)):
            label = f"adaptive {variant}" + (f" penalty={penalty:g}" if variant == "evade" else "")
            params = {"eps": eps, "steps": config.adaptive_steps, "restarts": config.adaptive_restarts,
                      "variant": variant, "penalty": penalty}
            run(label, "adaptive", params,
                lambda variant=variant, penalty=penalty: torch.cat([
                    adaptive_pgd(twin, x[i:i + bs], y[i:i + bs], variant, eps, config.adaptive_steps,
                                 restarts=config.adaptive_restarts, penalty=penalty)
                    for i in range(0, len(x), bs)]))
    return rows


def evaluate_bundle(path: Path | str, x: torch.Tensor, y: torch.Tensor, config: CardConfig = CardConfig(),
                    profile: str = "custom", split: str = "test", work_dir: Path | None = None,
                    partial: bool = False, jobs: int = 1, started=None) -> dict:
    """The robustness card of the bundle at `path` on images `x` (N x C x H x W in [0, 1]), labels `y`.

    Images are evaluated in shards of `config.shard`; with `work_dir`, each finished shard is
    written there and a later call with the same bundle models and config skips it (a full card
    resumes where it stopped). `partial`: build the card from the shards already in `work_dir`
    (at least one) instead of evaluating the missing ones; the card then says `complete: false`.
    `jobs` > 1 (with `work_dir`): that many processes share the shards (this one and jobs - 1
    helpers, each with its share of the torch threads); the card is the same as with one.
    `started` (an Event, for helpers): set once this process has claimed its first shard."""
    if jobs > 1 and work_dir is not None and not partial and min(len(x), config.n) > config.shard:
        threads = max(1, torch.get_num_threads() // jobs)
        before = torch.get_num_threads()
        helpers = start_helpers(path, x[:config.n], y[:config.n], config, split, Path(work_dir), jobs - 1, threads)
        torch.set_num_threads(threads)
        try:
            card = evaluate_bundle(path, x, y, config, profile, split, work_dir)
        except BaseException:
            for helper in helpers:  # this process failed or was interrupted: its helpers end with it
                helper.terminate()
            raise
        finally:
            torch.set_num_threads(before)
        for helper in helpers:  # every shard is written: they only build the same card, and end
            helper.join()
        return card
    began_all = time.perf_counter()
    bundle = load_bundle(path)
    pipeline = Pipeline.load(path)
    twin = BundleTwin.load(path)
    x, y = x[:config.n].float(), y[:config.n].long()
    parity = twin.parity(pipeline, x.numpy()[:256])
    if parity["max_score_diff"] > PARITY_TOLERANCE:
        log.warning("twin and served pipeline differ: %s", parity)
    store = ShardStore(work_dir, shard_key(bundle, config, split)) if work_dir is not None else None
    starts = range(0, len(x), config.shard)

    def evaluate(k: int) -> list[ShardRow]:
        """Shard k, evaluated here (its claim held) and saved."""
        if store is not None and (finished := store.load(k)) is not None:  # saved just before our claim
            store.release(k)
            return finished
        torch.manual_seed(k)  # each shard reproducible alone, whatever order or process ran it
        lo = starts[k]
        try:
            rows = evaluate_shard(pipeline, twin, x[lo:lo + config.shard], y[lo:lo + config.shard], config)
            if store is not None:
                store.save(k, rows)
        finally:
            if store is not None:
                store.release(k)
        log.info("card shard %d/%d done (%d images)", k + 1, len(starts), len(rows[0].served.correct))
        return rows

    found: dict[int, list[ShardRow]] = {}
    elsewhere: list[int] = []  # shards another process has claimed
    for k in tqdm(range(len(starts)), desc="card shards", unit="shard", disable=len(starts) < 2):
        done = store.load(k) if store is not None else None
        if done is None and not partial:
            if store is not None and not store.claim(k):
                elsewhere.append(k)
                continue
            if started is not None:
                started.set()
            done = evaluate(k)
        if done is not None:
            found[k] = done
    if started is not None:
        started.set()  # nothing left to claim
    for k in elsewhere:  # finished by the process that claimed it, or here if that process is gone
        log.info("card shard %d/%d: waiting for the process that claimed it", k + 1, len(starts))
        while (done := store.load(k)) is None:
            if store.claim(k):
                done = evaluate(k)
                break
            time.sleep(CLAIM_POLL_SECONDS)
        found[k] = done
    shards = [found[k] for k in sorted(found)]
    if not shards:
        raise FileNotFoundError(f"no finished card shard in {work_dir}: run the card without --partial first")
    evaluated = sum(len(s[0].served.correct) for s in shards)
    merged = [ShardRow.merge([s[i] for s in shards]) for i in range(len(shards[0]))]
    clean = merged[0].served
    rows = [row(r.label, r.kind, r.params, r.served, clean, r.seconds) for r in merged]
    per_image = {r.label: r.served.correct for r in merged[1:]
                 if r.params.get("eps", config.eps) == config.eps and r.params.get("norm") != "l2"}
    for r in rows[1:]:
        log.info("card %s: served accuracy %.4f, flagged %.4f", r["label"], r["served_accuracy"], r["flagged"])
    adaptive_labels = [r.label for r in merged if r.kind == "adaptive"]
    eps = config.eps
    adaptive_worst = (np.logical_and.reduce([per_image[k] for k in adaptive_labels]) & clean.correct
                      if adaptive_labels else None)
    all_worst = np.logical_and.reduce(list(per_image.values())) & clean.correct if per_image else None
    white_box = [r["served_accuracy"] for r in rows if r["kind"] in ("non-adaptive", "adaptive")
                 and r["params"].get("eps", eps) == eps and r["params"].get("norm") != "l2"]
    square_row = next((r for r in rows if r["kind"] == "black-box"), None)
    masked = (bool(white_box and square_row["served_accuracy"] < min(white_box) - config.masking_margin)
              if square_row is not None else None)
    if masked:
        log.warning("gradient masking suspected: Square (black-box) %.4f beats every white-box attack (best %.4f)",
                    square_row["served_accuracy"], min(white_box))
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "profile": profile, "config": asdict(config), "split": split, "n": evaluated, "eps": eps,
        "complete": evaluated == len(x), "images_planned": int(len(x)),
        "norm": "linf", "models": {m.file: m.sha256 for m in bundle.models},
        "twin_parity": parity, "twin_differentiable": twin.differentiable(),
        "clean": {"served_accuracy": rows[0]["served_accuracy"], "verdict_fpr": rows[0]["flagged"],
                  "primary_accuracy": round(float(clean.primary_correct.mean()), 4)},
        "attacks": rows[1:],
        "adaptive_worst_case_accuracy": round(float(adaptive_worst.mean()), 4) if adaptive_worst is not None else None,
        "worst_case_accuracy": round(float(all_worst.mean()), 4) if all_worst is not None else None,
        "gradient_masking_suspected": masked,
        "seconds": round(sum(r.seconds for r in merged), 1),
        "wall_seconds_this_call": round(time.perf_counter() - began_all, 1),
    }
