"""An eval-mode view of a model with each batch norm folded into the convolution before it.

Attacks run the model in eval mode, where `BatchNorm2d` is a fixed per-channel affine map, so
`bn(conv(x))` is one convolution with rescaled weights (the standard inference fusion). Folding
it removes a fifth to a sixth of the CPU time of every forward and backward pass of a BN CNN
and changes the function only by float rounding. The original model is left untouched: the
view shares every other module and holds fused copies of the folded convolutions, rebuilt on
each call (attacks inside a training loop see the current weights).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fused_eval_view(model: nn.Module) -> nn.Module:
    """`model` itself unless it is an `nn.Sequential` in eval mode with (Conv2d, BatchNorm2d)
    pairs; then a new Sequential with each pair folded into one Conv2d.

    Example: `with eval_mode(model): logits = fused_eval_view(model)(x)`
    """
    if not isinstance(model, nn.Sequential) or model.training:
        return model
    layers = list(model)
    out: list[nn.Module] = []
    folded = False
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and not nxt.training
                and nxt.track_running_stats and nxt.running_mean is not None
                and nxt.num_features == layer.out_channels):
            with torch.no_grad():
                conv = fuse_conv_bn_eval(layer, nxt)
            conv.requires_grad_(False)   # attacks differentiate with respect to the input only
            out.append(conv)
            folded = True
            i += 2
            continue
        out.append(fused_eval_view(layer) if isinstance(layer, nn.Sequential) else layer)
        folded = folded or out[-1] is not layer
        i += 1
    if not folded:
        return model
    view = nn.Sequential(*out)
    view.eval()
    return view
