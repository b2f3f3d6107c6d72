"""A bundle's PyTorch twin: the same models and the same guard as the served ONNX graphs, in
torch, so attacks can follow gradients through the whole defended system.

The twin is built from the checkpoints a bundle carries under `twins/` (one per model file,
SHA-256 in the manifest) and checked equal to ONNX Runtime on real images before any figure
is computed from it (`BundleTwin.parity`). Detectors are rewritten in torch with the same
arithmetic; non-differentiable steps get a stand-in gradient (`Gradient`):
- bit-depth reduction rounds forward and passes the gradient through unchanged (BPDA, Athalye
  et al. 2018);
- mia-vote's score is the hard vote share of the MIA ensemble's members (paper 002), exactly as
  `mia.onnx` computes it, with no gradient; the attack follows a surrogate instead
  (`vote_excess`): a hinge on the members' "adversarial" logit margins that is zero exactly where
  the vote share is under its threshold (with a margin), so the attacker is pushed to keep enough
  members voting for some real class.

Example:
    twin = BundleTwin.load(Path("model_store/fmnist-guarded/1"))
    scores = twin.scores(x)                     # N x D, as served
    scores, excess = twin.guard_terms(x)        # ... and each score's differentiable excess
    served = twin.served_logits(x)              # the answer the policy routes to
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.bundle import Bundle, BundleError, load_bundle, sha256_file
from serving.guard import Verdict
from training.checkpoint import load_model
from training.defenses.mia.ensemble import majority_vote

TWINS = "twins"
VOTE_MARGIN = 1.0  # logits: how far below its best real class a member's "adversarial" logit is pushed


class Gradient(StrEnum):
    """How the twin's gradient relates to the served function (the card's `twin_differentiable`):
    exact; surrogate (a stand-in gradient, BPDA or mia-vote's hinge, on the exact forward value);
    none (a detector without a torch twin; falsy)."""

    EXACT = "exact"
    SURROGATE = "surrogate"
    NONE = "none"

    def __bool__(self) -> bool:
        return self is not Gradient.NONE


GRADIENTS = {"low-confidence": Gradient.EXACT, "disagreement": Gradient.EXACT,
             "feature-squeezing": Gradient.SURROGATE, "mia-vote": Gradient.SURROGATE}


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


def vote_share(member_logits: torch.Tensor, tie_break: str) -> torch.Tensor:
    """M x N x (K+1) member logits -> N shares of "adversarial" votes, as `mia.onnx` computes them
    (`training.defenses.mia.export.MIAGraph`); no gradient (a count)."""
    votes, _ = majority_vote(member_logits, tie_break)
    return votes[:, -1] / member_logits.shape[0]


def vote_excess(member_logits: torch.Tensor, threshold: float, margin: float = VOTE_MARGIN) -> torch.Tensor:
    """Differentiable stand-in for `vote_share > threshold`: N values, zero exactly when at least
    the members the threshold requires have their "adversarial" logit `margin` below their best
    real class (so the share stays at or under the threshold).

    A member votes "adversarial" iff d = z_adv - max_k z_k > 0 (k a real class). With M members,
    the vote flags iff more than `allowed` vote (the largest k with k/M <= threshold, in float32
    as served); the hinge relu(d + margin) is averaged over the M - allowed members with the
    smallest d, the cheapest to keep off "adversarial"."""
    m = member_logits.shape[0]
    shares = torch.arange(m + 1, dtype=torch.float32) / m
    allowed = int((shares <= torch.tensor(threshold, dtype=torch.float32)).sum()) - 1
    need = m - allowed
    if need <= 0:  # the vote can never exceed the threshold
        return member_logits.new_zeros(member_logits.shape[1])
    d = member_logits[..., -1] - member_logits[..., :-1].max(dim=2).values  # M x N
    lowest = torch.topk(d, need, dim=0, largest=False).values
    return torch.relu(lowest + margin).mean(dim=0)


@dataclass
class TwinDetector:
    """One detector in torch: `score(x, probs, twin) -> N scores` as served, with its threshold;
    `terms` adds the differentiable excess the adaptive attack minimises."""

    name: str
    options: dict
    threshold: float

    def terms(self, x: torch.Tensor, probs: torch.Tensor, twin: "BundleTwin") -> tuple[torch.Tensor, torch.Tensor]:
        """(score as served, excess): the excess is differentiable and zero when the score is
        safely under the threshold; by default relu(score - 0.9 threshold) in units of the
        threshold, for mia-vote the hinge of `vote_excess` (the vote share has no gradient)."""
        if self.name == "mia-vote":  # the members run once for both
            ensemble = twin.owned(self.options["file"])
            member_logits = ensemble.member_logits(x)
            return vote_share(member_logits, ensemble.tie_break), vote_excess(member_logits, self.threshold)
        score = self.score(x, probs, twin)
        return score, torch.relu(score - 0.9 * self.threshold) / max(self.threshold, 1e-3)

    def score(self, x: torch.Tensor, probs: torch.Tensor, twin: "BundleTwin") -> torch.Tensor:
        if self.name == "mia-vote":
            return self.terms(x, probs, twin)[0]
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
        """Every model of the bundle from its twin checkpoint (the MIA ensemble of a `detector`
        model included), each checked against the SHA-256 the manifest records."""
        bundle = load_bundle(path)
        entries = {t["of"]: t for t in bundle.raw.get(TWINS, [])}
        models = {}
        for m in bundle.models:
            if m.file in models:
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
        return self.owned(file) if file else None

    def owned(self, file: str) -> nn.Module:
        """The twin of the bundle's model file `file` (e.g. a detector's own model, mia.onnx)."""
        key = file.replace(".", "_")
        if key not in self.files:
            raise BundleError(f"{self.bundle.path}: no twin of {file} among {', '.join(sorted(self.files))}")
        return self.files[key]

    @property
    def primary(self) -> nn.Module:
        return self._model("primary")

    @property
    def reference(self) -> nn.Module | None:
        return self._model("reference")

    @property
    def fallback(self) -> nn.Module | None:
        return self._model("fallback")

    def differentiable(self) -> Gradient:
        """The weakest gradient among the detectors: exact, surrogate (BPDA, mia-vote's hinge;
        the forward value stays exact) or none (a detector without a twin)."""
        kinds = {GRADIENTS.get(d.name, Gradient.NONE) for d in self.detectors}
        for kind in (Gradient.NONE, Gradient.SURROGATE):
            if kind in kinds:
                return kind
        return Gradient.EXACT

    def scores(self, x: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """N x D detector scores as served (zero columns for a detector without a twin)."""
        probs = torch.softmax(self.primary(x), dim=1) if probs is None else probs
        columns = []
        for d in self.detectors:
            try:
                columns.append(d.score(x, probs, self))
            except NotImplementedError:
                columns.append(torch.zeros(len(x), device=x.device))
        return torch.stack(columns, dim=1) if columns else torch.zeros(len(x), 0)

    def guard_terms(self, x: torch.Tensor, probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x D scores as served, N x D differentiable excesses over the safe region; see
        `TwinDetector.terms`), from one pass of each detector's models."""
        probs = torch.softmax(self.primary(x), dim=1) if probs is None else probs
        if not self.detectors:
            return torch.zeros(len(x), 0), torch.zeros(len(x), 0)
        scores, excess = zip(*(d.terms(x, probs, self) for d in self.detectors))
        return torch.stack(scores, dim=1), torch.stack(excess, dim=1)

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
        """Differences between this twin and the served pipeline (ONNX Runtime) on `x`: the largest
        in served probabilities and in each detector's score (`score_diff`, by name), and the
        shares of equal answers and equal flags (verdict ADVERSARIAL)."""
        result = pipeline.run(x)
        t = torch.from_numpy(x)
        probs = torch.softmax(self.served_logits(t), dim=1).numpy()
        scores = self.scores(t)
        flags = self.flagged(scores).numpy() if self.detectors else np.zeros(len(x), dtype=bool)
        served_flags, per_detector = np.zeros(len(x), dtype=bool), {}
        if result.guard is not None and result.guard.outcomes:
            served_flags = result.guard.verdicts == Verdict.ADVERSARIAL
            per_detector = {o.name: float(np.abs(o.scores - scores[:, j].numpy()).max())
                            for j, o in enumerate(result.guard.outcomes)}
        return {"images": int(len(x)), "max_prob_diff": float(np.abs(result.probs - probs).max()),
                "max_score_diff": max(per_detector.values(), default=0.0), "score_diff": per_detector,
                "answers_equal": float(np.mean(result.classes == probs.argmax(axis=1))),
                "flags_equal": float(np.mean(served_flags == flags))}
