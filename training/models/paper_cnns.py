"""The source papers' architectures (000: selective fine-tuning, 001: distillation,
002: MIA ensemble) and advguard's default Fashion-MNIST CNN."""
from __future__ import annotations

from torch import nn

from training.models.registry import ModelSpec, Normalize, register_model


def _conv_block(c_in: int, c_out: int, k: int, act: type[nn.Module], dropout: float) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2), act(), nn.MaxPool2d(2), nn.Dropout(dropout)]


def _paper000(spec: ModelSpec, channels: list[tuple[int, int]]) -> nn.Module:
    """conv blocks (same padding, ReLU, maxpool 2, dropout) -> dense 32 -> dense classes."""
    layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
    c_in, size = spec.in_channels, spec.image_size
    for c_out, k in channels:
        layers += _conv_block(c_in, c_out, k, nn.ReLU, 0.25)
        c_in, size = c_out, size // 2
    layers += [nn.Flatten(), nn.Linear(c_in * size * size, 32), nn.ReLU(), nn.Linear(32, spec.num_classes)]
    return nn.Sequential(*layers)


@register_model("mnist-base")
def mnist_base(spec: ModelSpec) -> nn.Module:
    """Paper 000's base model: 120,042 parameters on 28x28x1."""
    return _paper000(spec, [(32, 5), (64, 3)])


@register_model("mnist-shallow")
def mnist_shallow(spec: ModelSpec) -> nn.Module:
    return _paper000(spec, [(16, 5), (32, 3)])


@register_model("mnist-dense")
def mnist_dense(spec: ModelSpec) -> nn.Module:
    return _paper000(spec, [(32, 5), (64, 3), (128, 3)])


@register_model("distill-cnn")
def distill_cnn(spec: ModelSpec) -> nn.Module:
    """Paper 001's CNN: conv32 3x3 -> conv64 3x3 -> maxpool -> dropout .25 -> fc128 -> dropout .5."""
    size = (spec.image_size - 4) // 2
    return nn.Sequential(
        Normalize(spec.mean, spec.std),
        nn.Conv2d(spec.in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * size * size, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, spec.num_classes),
    )


def _he_uniform(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


def _paper002(spec: ModelSpec, convs: list[int], pools: int, dense: int, act: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
    c_in, size = spec.in_channels, spec.image_size
    for c_out in convs:
        layers += [nn.Conv2d(c_in, c_out, 3), act()]
        c_in, size = c_out, size - 2
    for _ in range(pools):
        layers.append(nn.MaxPool2d(2))
        size //= 2
    layers.append(nn.Flatten())
    width = c_in * size * size
    for _ in range(dense):
        layers += [nn.Linear(width, 100), act()]
        width = 100
    layers.append(nn.Linear(width, spec.num_classes))
    return _he_uniform(nn.Sequential(*layers))


@register_model("mia-target")
def mia_target(spec: ModelSpec) -> nn.Module:
    """Paper 002's target model: conv32 3x3, maxpool, dense 100 (ReLU)."""
    return _paper002(spec, [32], 1, 1, nn.ReLU)


@register_model("eat1")
def eat1(spec: ModelSpec) -> nn.Module:
    """Paper 002 Table 1, EAT1: conv32 3x3, maxpool 2, dense 100, GELU, he_uniform."""
    return _paper002(spec, [32], 1, 1, nn.GELU)


@register_model("eat2")
def eat2(spec: ModelSpec) -> nn.Module:
    """EAT2: conv32 3x3, 2 maxpools, 3 dense 100."""
    return _paper002(spec, [32], 2, 3, nn.GELU)


@register_model("eat3")
def eat3(spec: ModelSpec) -> nn.Module:
    """EAT3: conv64 + conv32 3x3, 2 maxpools, 3 dense 100."""
    return _paper002(spec, [64, 32], 2, 3, nn.GELU)


@register_model("fmnist-cnn")
def fmnist_cnn(spec: ModelSpec) -> nn.Module:
    """advguard's default: two VGG-style blocks (32, 64) with batch norm, fc 128; ~0.47M params."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    size = spec.image_size // 4
    return nn.Sequential(
        Normalize(spec.mean, spec.std),
        *block(spec.in_channels, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * size * size, 128), nn.ReLU(),
        nn.Linear(128, spec.num_classes),
    )


@register_model("fmnist-fast")
def fmnist_fast(spec: ModelSpec) -> nn.Module:
    """advguard's serving-speed CNN: three conv blocks (16, 32, 64), each with batch norm and a
    2x2 max pool, fc 128; ~0.1M parameters and ~2M multiply-adds per 28x28 image (fmnist-cnn:
    ~19M), so the guard's three forward passes per image stay cheap on a CPU."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]

    size = spec.image_size // 8
    return nn.Sequential(
        Normalize(spec.mean, spec.std),
        *block(spec.in_channels, 16), *block(16, 32), *block(32, 64),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * size * size, 128), nn.ReLU(),
        nn.Linear(128, spec.num_classes),
    )
