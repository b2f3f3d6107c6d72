"""Exact logits for images that differ from clean ones in a few pixels, recomputing only the
part of a convolutional prefix those pixels reach (for sparse black-box attacks).

For an `nn.Sequential` whose first layers are convolutions (stride 1), pools (kernel = stride),
batch norm, normalization, dropout and element-wise activations, a change to a few pixels
alters only a window of every feature map. `LocalEvaluator` caches each clean image's
feature maps once, then for a candidate propagates only the changed window (plus the halo
each layer needs, taken from the cached maps), pastes the last window into the clean map and
runs the rest of the network in full. When that rest starts with `Flatten` and a `Linear`
layer (dropout between is the identity in eval mode), the linear layer too sees only the
window: its output is the clean image's plus the weight columns of the window times the
window's change (exact up to float rounding), so the full last map is never rebuilt. Models it
cannot split fall back to a full forward.
"""
from __future__ import annotations

import torch
from torch import nn

from training.models import Normalize

_POINTWISE = (Normalize, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.ELU,
              nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.Dropout2d)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _local_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, _POINTWISE):
        return "point"
    if isinstance(layer, nn.Conv2d):
        k = _pair(layer.kernel_size)
        pad = tuple(x // 2 for x in k) if layer.padding == "same" else layer.padding
        if (_pair(layer.stride) == (1, 1) and _pair(layer.dilation) == (1, 1)
                and layer.padding_mode == "zeros" and isinstance(pad, (int, tuple))
                and (layer.padding != "same" or all(x % 2 for x in k))):
            return "conv"
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
        if k == s and _pair(layer.padding) == (0, 0) and not layer.ceil_mode and \
                _pair(getattr(layer, "dilation", 1)) == (1, 1):
            return "pool"
    return None


def _flat_index(shape: tuple[int, ...], owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
                h: int, w: int) -> torch.Tensor:
    """Row indices (M * h * w,) into a (B * H * W, C) view of channels-last maps of `shape`."""
    _, height, width = shape[:3]
    rows = r0[:, None, None] + torch.arange(h, device=r0.device)[None, :, None]
    cols = c0[:, None, None] + torch.arange(w, device=c0.device)[None, None, :]
    return ((owner[:, None, None] * height + rows) * width + cols).reshape(-1)


def gather_windows(maps: torch.Tensor, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
                   h: int, w: int) -> torch.Tensor:
    """Windows of channels-last maps (B, H, W, C): maps[owner[m], r0[m]:r0[m]+h, c0[m]:c0[m]+w]
    as a contiguous (M, h, w, C) tensor (one row gather, the fast path for this)."""
    idx = _flat_index(maps.shape, owner, r0, c0, h, w)
    return maps.reshape(-1, maps.shape[-1]).index_select(0, idx).view(len(owner), h, w, maps.shape[-1])


def paste_windows(window: torch.Tensor, crop: torch.Tensor, dr: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    """Write crop (M, h, w, C) into the contiguous window (M, H, W, C) at (dr[m], dc[m]), in place."""
    m, h, w, c = crop.shape
    idx = _flat_index(window.shape, torch.arange(m, device=crop.device), dr, dc, h, w)
    window.view(-1, c).index_copy_(0, idx, crop.reshape(-1, c))
    return window


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """A channels-last NCHW view of a contiguous NHWC tensor (no copy)."""
    return t.permute(0, 3, 1, 2)


class LocalEvaluator:
    """Logits of clean images `x` with small windows replaced.

    Example: `ev = LocalEvaluator(model, x); logits = ev.logits(owner, r0, c0, crops)` where
    crop m (C, h, w) replaces x[owner[m], :, r0[m]:r0[m]+h, c0[m]:c0[m]+w]. `local=False`
    (or a model it cannot split) evaluates every image in full. Maps are cached channels-last
    so that windows gather and paste as contiguous blocks and convolutions run channels-last.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, local: bool = True) -> None:
        self.model = model
        self.x = x
        layers = list(model) if local and isinstance(model, nn.Sequential) else []
        self.local: list[tuple[nn.Module, str]] = []
        self.maps: list[torch.Tensor] = []   # each local layer's input (padded for convs), then the output
        self.sizes: list[tuple[int, int]] = []  # each local layer's output size
        with torch.no_grad():
            out = x
            for layer in layers:
                kind = _local_kind(layer)
                if kind is None or (kind == "pool" and any(
                        n % s for n, s in zip(out.shape[-2:], _pair(layer.stride or layer.kernel_size)))):
                    break
                if kind == "conv":
                    p = self._conv_pad(layer)
                    self.maps.append(_nhwc(nn.functional.pad(out, (p[1], p[1], p[0], p[0]))).contiguous())
                else:
                    self.maps.append(_nhwc(out).contiguous())
                self.local.append((layer, kind))
                out = layer(out)
                self.sizes.append(tuple(out.shape[-2:]))
            self.maps.append(_nhwc(out).contiguous())
        self.images = _nhwc(x).contiguous()
        self.head = nn.Sequential(*layers[len(self.local):])
        self.enabled = any(kind != "point" for _, kind in self.local)
        self.linear, self.after_linear = self._split_linear(self.head)
        if self.enabled and self.linear is not None:
            with torch.no_grad():
                self.clean_z = self.linear(_nchw(self.maps[-1]).flatten(1))
        self._columns: dict[tuple[int, int, int, int], torch.Tensor] = {}

    @staticmethod
    def _split_linear(head: nn.Sequential) -> tuple[nn.Linear | None, nn.Sequential]:
        """(linear, rest) when head is Flatten, dropouts, Linear, rest...; else (None, head)."""
        layers = list(head)
        if not layers or not isinstance(layers[0], nn.Flatten) or layers[0].start_dim != 1:
            return None, head
        i = 1
        while i < len(layers) and isinstance(layers[i], (nn.Dropout, nn.Identity)):
            i += 1
        if i < len(layers) and isinstance(layers[i], nn.Linear):
            return layers[i], nn.Sequential(*layers[i + 1:])
        return None, head

    def _window_columns(self, r0: int, c0: int, h: int, w: int) -> torch.Tensor:
        """The linear layer's weight columns (h * w * C, out) of the last map's window at
        (r0, c0), in the channels-last order of a gathered window; cached per window."""
        key = (r0, c0, h, w)
        if key not in self._columns:
            _, height, width, channels = self.maps[-1].shape
            rows = torch.arange(r0, r0 + h)[:, None, None]
            cols = torch.arange(c0, c0 + w)[None, :, None]
            chan = torch.arange(channels)[None, None, :]
            idx = ((chan * height + rows) * width + cols).reshape(-1).to(self.linear.weight.device)
            self._columns[key] = self.linear.weight.index_select(1, idx).t().contiguous()
        return self._columns[key]

    def _linear_from_window(self, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
                            crop: torch.Tensor) -> torch.Tensor:
        """The linear layer's output for the clean last maps with crop (M, h, w, C) pasted in."""
        m, h, w, c = crop.shape
        delta = (crop - gather_windows(self.maps[-1], owner, r0, c0, h, w)).reshape(m, -1)
        width = self.maps[-1].shape[2]
        position = r0 * width + c0
        where, counts = torch.unique(position, return_counts=True)
        order = torch.argsort(position)
        parts = [chunk @ self._window_columns(pos // width, pos % width, h, w)
                 for pos, chunk in zip(where.tolist(), delta[order].split(counts.tolist()))]
        z = torch.empty(m, self.clean_z.shape[1], dtype=delta.dtype, device=delta.device)
        z[order] = torch.cat(parts)
        return z + self.clean_z.index_select(0, owner)

    @staticmethod
    def _conv_pad(layer: nn.Conv2d) -> tuple[int, int]:
        if layer.padding == "same":
            return tuple(k // 2 for k in _pair(layer.kernel_size))
        return _pair(layer.padding)

    def windows(self, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Windows of the clean images as (M, C, h, w) (channels-last), to edit into crops."""
        return _nchw(gather_windows(self.images, owner, r0, c0, h, w))

    @torch.no_grad()
    def logits(self, owner: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
               crop: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            full = paste_windows(self.images.index_select(0, owner), _nhwc(crop), r0, c0)
            return self.model(_nchw(full).contiguous())
        for i, (layer, kind) in enumerate(self.local):
            h, w = crop.shape[-2:]
            if kind == "point":
                crop = layer(crop)
                continue
            if kind == "conv":
                (kh, kw), (ph, pw) = _pair(layer.kernel_size), self._conv_pad(layer)
                size_h, size_w = self.sizes[i]
                ho, wo = min(h + kh - 1, size_h), min(w + kw - 1, size_w)
                o_r = (r0 + ph - kh + 1).clamp(0, size_h - ho)
                o_c = (c0 + pw - kw + 1).clamp(0, size_w - wo)
                window = gather_windows(self.maps[i], owner, o_r, o_c, ho + kh - 1, wo + kw - 1)
                window = paste_windows(window, _nhwc(crop), r0 + ph - o_r, c0 + pw - o_c)
                crop = nn.functional.conv2d(_nchw(window), layer.weight, layer.bias, groups=layer.groups)
            else:
                (sh, sw) = _pair(layer.stride or layer.kernel_size)
                size_h, size_w = self.sizes[i]
                ho, wo = min((h + 2 * sh - 2) // sh, size_h), min((w + 2 * sw - 2) // sw, size_w)
                o_r = (r0 // sh).clamp(0, size_h - ho)
                o_c = (c0 // sw).clamp(0, size_w - wo)
                window = gather_windows(self.maps[i], owner, o_r * sh, o_c * sw, ho * sh, wo * sw)
                crop = layer(_nchw(paste_windows(window, _nhwc(crop), r0 - o_r * sh, c0 - o_c * sw)))
            r0, c0 = o_r, o_c
        if self.linear is not None:
            return self.after_linear(self._linear_from_window(owner, r0, c0, _nhwc(crop).contiguous()))
        full = paste_windows(self.maps[-1].index_select(0, owner), _nhwc(crop), r0, c0)
        return self.head(_nchw(full))
