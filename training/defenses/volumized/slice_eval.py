"""Cheap, exact scoring of sparse candidates for a volumized model whose slices are independent.

When a `VolumetricNet` has a depth kernel of 1 and a slice order no input can move
(`VolumetricNet.slices_independent`), a candidate image that differs from a clean one in a
few pixels differs in the slices those pixels fall in, and only those rows of the per-slice
scores change. `SliceEvaluator` caches every clean image's N x Z x K slice scores once and,
for a batch of candidates (from any number of images, as the attack batches them), finds the
changed (candidate, slice) pairs, pushes only those slices through the body and head, writes
them into a copy of the cached scores and aggregates. A one-pixel candidate costs one 7 x 7
slice instead of a 16-slice volume. The permutation is the volumizer's fixed one, reused.

It offers the interface `NPixel` uses for its local evaluator (`x`, `windows`, `logits`), and
`VolumetricNet.candidate_evaluator` hands it to the attack.
"""
from __future__ import annotations

import torch

from training.defenses.volumized.volumizer import slice_grid


def paste(x: torch.Tensor, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
          crop: torch.Tensor) -> torch.Tensor:
    """x[owner] (M, C, H, W) with crop (M, C, h, w) written at (r0[m], c0[m])."""
    out = x.index_select(0, owner).clone()
    m, _, h, w = crop.shape
    rows = (r0[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (c0[:, None] + torch.arange(w, device=x.device))[:, None, :]
    idx = torch.arange(m, device=x.device)[:, None, None]
    out[idx, :, rows, cols] = crop.permute(0, 2, 3, 1).to(out.dtype)
    return out


class SliceEvaluator:
    """Scores candidates of the images x (B, C, H, W) for `model` (slices independent).

    Example: `ev = SliceEvaluator(model.eval(), x); logits = ev.logits(owner, rows, cols, crops)`
    """

    def __init__(self, model, x: torch.Tensor, chunk: int = 8192) -> None:
        if not model.slices_independent:
            raise ValueError("SliceEvaluator needs depth_kernel=1 and a fixed order (or no position vectors)")
        self.model, self.x, self.chunk = model, x, chunk
        cfg = model.volumizer.config
        self.slice_h, self.slice_w = cfg.slice_h, cfg.slice_w
        self.clean_slices = slice_grid(x, cfg.slice_h, cfg.slice_w)  # B x C x Z x h x w, grid order
        z = self.clean_slices.shape[2]
        order = model.volumizer.order(x[:1])[0]                      # depth k holds grid slice order[k]
        self.depth_of = torch.empty(z, dtype=torch.long, device=x.device)
        self.depth_of[order] = torch.arange(z, device=x.device)
        with torch.no_grad():
            self.clean_scores = torch.cat([model.slice_logits(x[i:i + 256]) for i in range(0, len(x), 256)])

    def windows(self, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Windows of the clean images (M, C, h, w) at (r0[m], c0[m]), to edit into crops."""
        rows = (r0[:, None] + torch.arange(h, device=r0.device))[:, :, None]
        cols = (c0[:, None] + torch.arange(w, device=c0.device))[:, None, :]
        picked = self.x.index_select(0, owner)
        idx = torch.arange(len(owner), device=r0.device)[:, None, None]
        return picked[idx, :, rows, cols].permute(0, 3, 1, 2)

    @torch.no_grad()
    def slice_scores(self, slices: torch.Tensor, grid_index: torch.Tensor) -> torch.Tensor:
        """Scores (P, K) of P single slices (P, C, h, w) found at grid positions `grid_index`."""
        out = []
        for start in range(0, len(slices), self.chunk):
            part = slices[start:start + self.chunk].unsqueeze(2)        # P x C x 1 x h x w
            feats = self.model.body(part)[:, 0]                          # P x F
            if self.model.position is not None:
                feats = feats + self.model.position[self.depth_of[grid_index[start:start + self.chunk]]]
            out.append(self.model.head(feats))
        return torch.cat(out) if out else slices.new_zeros(0, self.clean_scores.shape[-1])

    @torch.no_grad()
    def logits(self, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """Aggregated logits (M, K) of x[owner] with crop m written at (r0[m], c0[m])."""
        images = paste(self.x, owner, r0, c0, crop)
        slices = slice_grid(images, self.slice_h, self.slice_w)          # M x C x Z x h x w
        changed = (slices != self.clean_slices.index_select(0, owner)).flatten(3).any(dim=3).any(dim=1)
        m_idx, z_idx = changed.nonzero(as_tuple=True)
        scores = self.clean_scores.index_select(0, owner).clone()        # M x Z(depth) x K
        if len(m_idx):
            fresh = self.slice_scores(slices[m_idx, :, z_idx], z_idx)
            scores[m_idx, self.depth_of[z_idx]] = fresh.to(scores.dtype)
        return self.model.aggregate(scores)
