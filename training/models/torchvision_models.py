"""torchvision classifiers by name (`tv-resnet18`, `tv-alexnet`, ...): random weights, or
weights from a user's file. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.models.registry import ModelSpec, Normalize, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_ARCHS = ("resnet18", "resnet50", "resnet101", "alexnet", "regnet_y_400mf",
                     "mobilenet_v3_small", "efficientnet_b0")


def _builder(arch: str):
    def build(spec: ModelSpec) -> nn.Module:
        import torchvision

        net = torchvision.models.get_model(arch, weights=None, num_classes=spec.num_classes)
        weights_path = spec.options.get("weights_path")
        if weights_path:
            path = Path(weights_path)
            if not path.exists():
                raise FileNotFoundError(f"weights file {path} not found: pass the path of a "
                                        f"state_dict saved from torchvision's {arch}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        return nn.Sequential(Normalize(spec.mean, spec.std), net)

    return build


def register_torchvision() -> None:
    for arch in TORCHVISION_ARCHS:
        register_model(f"tv-{arch}")(_builder(arch))
