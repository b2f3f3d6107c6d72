"""A bundle's PyTorch twin: the same models and the same guard as the served ONNX graphs, in
torch, so attacks can follow gradients through the whole defended system.

The twin is built from the checkpoints a bundle carries under `twins/` (one per model file,
SHA-256 in the manifest) and checked equal to ONNX Runtime on real images before any figure
is computed from it (`BundleTwin.parity`). Detectors are rewritten in torch with the same
arithmetic; non-differentiable steps get a straight-through gradient (BPDA, Athalye et al.
2018): bit-depth reduction rounds forward and passes the gradient through unchanged.

Example:
    twin = BundleTwin.load(Path("model_store/fmnist-guarded/1"))
    scores = twin.scores(x)                     # N x D, differentiable
    served = twin.served_logits(x)              # the answer the policy routes to
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.bundle import Bundle, BundleError, load_bundle, sha256_file
from training.checkpoint import load_model

TWINS = "twins"


def straight_through(x: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """`forward`'s value with the identity's gradient (BPDA)."""
    return x + (forward - x).detach()


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = float(2 ** bits - 1)
    return straight_through(x, torch.round(x * levels) / levels)


def median_2x2(x: torch.Tensor) -> torch.Tensor:
    """serving.guard.squeezing.median_smooth_2x2 in torch (upper middle of the 2x2 window)."""
    padded = torch.cat([x[..., :1, :], x], dim=-2)
    padded = torch.cat([padded[..., :1], padded], dim=-1)
    a, b = padded[..., :-1, :-1], padded[..., :-1, 1:]
    c, d = padded[..., 1:, :-1], padded[..., 1:, 1:]
    hi1, lo1 = torch.maximum(a, b), torch.minimum(a, b)
    hi2, lo2 = torch.maximum(c, d), torch.minimum(c, d)
    return torch.maximum(torch.minimum(hi1, hi2), torch.maximum(lo1, lo2))


@dataclass
class TwinDetector:
    """One detector in torch: `score(probs, x, twin) -> N scores`, with its threshold."""

    name: str
    options: dict
    threshold: float

    def score(self, x: torch.Tensor, probs: torch.Tensor, twin: "BundleTwin") -> torch.Tensor:
        if self.name == "low-confidence":
            return 1.0 - probs.max(dim=1).values
        if self.name == "feature-squeezing":
            views = [bit_depth(x, int(self.options.get("bits", 2)))]
            if int(self.options.get("median", 2)):
                views.append(median_2x2(x))
            return torch.stack([(probs - torch.softmax(twin.primary(v), dim=1)).abs().sum(dim=1) for v in views],
                               dim=1).max(dim=1).values
        if self.name == "disagreement":
            ref = torch.softmax(twin.reference(x), dim=1)
            kind = self.options.get("score", "margin")
            if kind == "tv":
                return 0.5 * (probs - ref).abs().sum(dim=1)
            believed = ref.gather(1, probs.argmax(dim=1, keepdim=True))[:, 0]
            return 1.0 - believed if kind == "doubt" else ref.max(dim=1).values - believed
        raise NotImplementedError(f"no torch twin for detector {self.name!r}: the adaptive attack cannot "
                                  "follow its gradient (the card says so)")


class BundleTwin(nn.Module):
    """The defended system in torch: primary, reference, fallback and the guard's detectors."""

    def __init__(self, bundle: Bundle, models: dict[str, nn.Module], detectors: list[TwinDetector]) -> None:
        super().__init__()
        self.bundle = bundle
        self.files = nn.ModuleDict({k.replace(".", "_"): m.eval() for k, m in models.items()})
        self.roles = {m.role: m.file for m in bundle.models if m.file in models}
        self.detectors = detectors
        guard = bundle.guard or {}
        self.combine, self.action = guard.get("policy", "any"), guard.get("action", "flag")

    @classmethod
    def load(cls, path: Path | str) -> "BundleTwin":
        bundle = load_bundle(path)
        entries = {t["of"]: t for t in bundle.raw.get(TWINS, [])}
        models = {}
        for m in bundle.models:
            if m.role == "detector" or m.file in models:
                continue
            twin = entries.get(m.file)
            if twin is None:
                raise BundleError(f"{bundle.path}: no PyTorch twin for {m.file} (role {m.role}); bundles built by "
                                  "`advguard bundle` carry one per model under twins/")
            file = bundle.path / twin["file"]
            if sha256_file(file) != twin["sha256"]:
                raise BundleError(f"{file}: SHA-256 does not match the manifest; refusing a modified twin")
            models[m.file] = load_model(file)[0]
        detectors = [TwinDetector(d["name"], d.get("options", {}), float(d["threshold"]))
                     for d in (bundle.guard or {}).get("detectors", [])]
        return cls(bundle, models, detectors)

    def _model(self, role: str) -> nn.Module | None:
        file = self.roles.get(role)
        return self.files[file.replace(".", "_")] if file else None

    @property
    def primary(self) -> nn.Module:
        return self._model("primary")

    @property
    def reference(self) -> nn.Module | None:
        return self._model("reference")

    @property
    def fallback(self) -> nn.Module | None:
        return self._model("fallback")

    def differentiable(self) -> bool:
        return all(d.name in ("low-confidence", "feature-squeezing", "disagreement") for d in self.detectors)

    def scores(self, x: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """N x D detector scores (zero columns for a detector without a twin)."""
        probs = torch.softmax(self.primary(x), dim=1) if probs is None else probs
        columns = []
        for d in self.detectors:
            try:
                columns.append(d.score(x, probs, self))
            except NotImplementedError:
                columns.append(torch.zeros(len(x), device=x.device))
        return torch.stack(columns, dim=1) if columns else torch.zeros(len(x), 0)

    def thresholds(self) -> torch.Tensor:
        return torch.tensor([d.threshold for d in self.detectors], dtype=torch.float32)

    def flagged(self, scores: torch.Tensor) -> torch.Tensor:
        votes = (scores > self.thresholds()).sum(dim=1)
        needed = 1 if self.combine == "any" else len(self.detectors) // 2 + 1
        return votes >= needed if self.detectors else torch.zeros(len(scores), dtype=torch.bool)

    def routes(self) -> bool:
        """Flagged inputs are answered by the fallback (action fallback, with detectors)."""
        return self.action == "fallback" and self.fallback is not None and bool(self.detectors)

    def route(self, logits: torch.Tensor, scores: torch.Tensor, fallback_logits: torch.Tensor) -> torch.Tensor:
        """The served logits from the primary's, the guard's scores and the fallback's."""
        return torch.where(self.flagged(scores.detach())[:, None], fallback_logits, logits)

    def served_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The served answer's logits: the fallback's where the guard flags (action fallback),
        else the primary's."""
        logits = self.primary(x)
        if not self.routes():
            return logits
        return self.route(logits, self.scores(x, torch.softmax(logits, dim=1)), self.fallback(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.served_logits(x)

    @torch.no_grad()
    def parity(self, pipeline, x: np.ndarray) -> dict:
        """Largest differences between this twin and the served pipeline (ONNX Runtime) on `x`:
        served probabilities and detector scores."""
        result = pipeline.run(x)
        t = torch.from_numpy(x)
        probs = torch.softmax(self.served_logits(t), dim=1).numpy()
        scores = self.scores(t).numpy()
        score_diff = 0.0
        if result.guard is not None and result.guard.outcomes:
            served_scores = np.stack([o.scores for o in result.guard.outcomes], axis=1)
            score_diff = float(np.abs(served_scores - scores).max())
        return {"images": int(len(x)), "max_prob_diff": float(np.abs(result.probs - probs).max()),
                "max_score_diff": score_diff}
