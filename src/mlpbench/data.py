"""The lesson's two datasets, one-hot targets and accuracy.

``toy`` is the 9-point / 3-class example the lesson trains its first network on; ``blobs`` is
the homework's ``make_blobs`` + ``train_test_split`` data. Both are deterministic: the same
arguments give the same tensors on every run.

Importing this module does not import torch (the workflow's config check reads the sizes of the
data sets at every ``snakemake`` call); the functions that build tensors import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DATASETS = ("toy", "blobs")
N_FEATURES = 2  # both data sets are points in the plane (make_blobs' default n_features)

# The lesson's first-network data, point for point.
TOY_X_TRAIN = [[-2, -1], [-1, -1], [-1, -2], [2, -1], [1, -1], [1, -2], [2, 1], [1, 1], [1, 2]]
TOY_Y_TRAIN = [0, 0, 0, 1, 1, 1, 2, 2, 2]
TOY_X_TEST = [[-2, -2], [2, -2], [2, 2]]
TOY_Y_TEST = [0, 1, 2]
TOY_CLASSES = 3

# The lesson's homework call: make_blobs(n_samples=400, centers=4, cluster_std=2, random_state=10)
# then train_test_split(test_size=0.4, random_state=2).
BLOBS_DEFAULTS: dict[str, Any] = {
    "n_samples": 400,
    "centers": 4,
    "cluster_std": 2.0,
    "random_state": 10,
    "test_size": 0.4,
    "split_random_state": 2,
}


@dataclass(frozen=True)
class Dataset:
    """Train/test split: features float32 (n, n_features), labels int64 (n,) in 0..n_classes-1."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def to(self, device: str | torch.device) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.n_classes,
        )


def _dataset(name: str, x_train, y_train, x_test, y_test, n_classes: int) -> Dataset:
    """Features as float32 and labels as int64 tensors, whatever they came as."""
    import torch

    return Dataset(
        name=name,
        x_train=torch.tensor(x_train).float(),
        y_train=torch.tensor(y_train, dtype=torch.int64),
        x_test=torch.tensor(x_test).float(),
        y_test=torch.tensor(y_test, dtype=torch.int64),
        n_classes=n_classes,
    )


def toy() -> Dataset:
    """The lesson's first-network data, point for point (labels 0,0,0,1,1,1,2,2,2; test 0,1,2)."""
    return _dataset("toy", TOY_X_TRAIN, TOY_Y_TRAIN, TOY_X_TEST, TOY_Y_TEST, n_classes=TOY_CLASSES)


def blobs(
    n_samples: int = 400,
    centers: int = 4,
    cluster_std: float = 2.0,
    random_state: int = 10,
    test_size: float = 0.4,
    split_random_state: int = 2,
) -> Dataset:
    """The homework's data: ``make_blobs`` then ``train_test_split``, defaults as in the lesson."""
    x_train, x_test, y_train, y_test = _blobs_split(
        n_samples, centers, cluster_std, random_state, test_size, split_random_state
    )
    return _dataset("blobs", x_train, y_train, x_test, y_test, n_classes=int(centers))


def _blobs_split(n_samples, centers, cluster_std, random_state, test_size, split_random_state):
    """``make_blobs`` then ``train_test_split``: x_train, x_test, y_train, y_test (NumPy)."""
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import make_blobs
    from sklearn.model_selection import train_test_split

    x, y = make_blobs(
        n_samples=n_samples, centers=centers, cluster_std=cluster_std, random_state=random_state
    )
    return train_test_split(x, y, test_size=test_size, random_state=split_random_state)


def points(name: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The points of ``load(name, cfg)`` as NumPy arrays, built without importing torch.

    ``x_train``/``x_test`` are float32 (n, n_features), the values the network sees;
    ``y_train``/``y_test`` are int64 (n,). For readers that only show the points (the
    aggregation): importing torch takes seconds.
    """
    import numpy as np

    if name == "toy":
        x_train, x_test, y_train, y_test = TOY_X_TRAIN, TOY_X_TEST, TOY_Y_TRAIN, TOY_Y_TEST
    else:
        x_train, x_test, y_train, y_test = _blobs_split(**blobs_data(cfg))
    return {"x_train": np.asarray(x_train, dtype=np.float32),
            "y_train": np.asarray(y_train, dtype=np.int64),
            "x_test": np.asarray(x_test, dtype=np.float32),
            "y_test": np.asarray(y_test, dtype=np.int64)}


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Float one-hot targets, as the lesson feeds them to ``CrossEntropyLoss``."""
    import torch.nn.functional as F

    return F.one_hot(labels, n_classes).float()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max logit is the label.

    ``logits`` is (n, C) for one model or (members, n, C) for an ensemble; the result is a
    0-d tensor or one value per member.
    """
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)


def blobs_data(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``blobs`` parameters: the lesson's, updated by ``cfg["data"]`` where given."""
    return {**BLOBS_DEFAULTS, **((cfg or {}).get("data") or {})}


def split_sizes(name: str, cfg: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(training points, test points) of a data set, without building it.

    toy: 9 and 3. blobs: as ``train_test_split`` counts a float ``test_size``:
    ``n_test = ceil(test_size * n_samples)`` and ``n_train = n_samples - n_test``.
    """
    if name == "toy":
        return len(TOY_Y_TRAIN), len(TOY_Y_TEST)
    data = blobs_data(cfg)
    n_test = math.ceil(data["test_size"] * data["n_samples"])
    return data["n_samples"] - n_test, n_test


def n_classes(name: str, cfg: Mapping[str, Any] | None = None) -> int:
    """Number of classes: 3 for toy, ``centers`` for blobs."""
    return TOY_CLASSES if name == "toy" else int(blobs_data(cfg)["centers"])


def load(name: str, cfg: Mapping[str, Any] | None = None) -> Dataset:
    """Build a dataset by name; for ``blobs`` the optional ``cfg["data"]`` overrides the lesson's values.

    ``name`` is one of ``DATASETS`` and ``cfg`` a checked experiment config (see
    ``workflow/schemas/config.schema.yaml``); neither is checked again here.
    """
    if name == "toy":
        return toy()
    return blobs(**blobs_data(cfg))
