"""The data sets, one registry entry each; one-hot targets and accuracy.

``toy`` is the 9-point / 3-class example the lesson trains its first network on; ``blobs`` is
the homework's ``make_blobs`` + ``train_test_split`` data. Both are deterministic: the same
arguments give the same tensors on every run.

Importing this module does not import torch (the workflow's config check reads the sizes of the
data sets at every ``snakemake`` call); the functions that build tensors import it.

A data set is one :class:`DatasetEntry`: its generator (whose keyword defaults are the defaults
of its ``data:`` parameters), how it is split, the JSON-schema block of those parameters, and its
size without building it (classes, training and test points). Everything else reads the
registered names from here: the config schema (:func:`config_schema` adds one
``train.experiments.<name>`` per entry, its ``data:`` block included), the workflow's ``dataset``
wildcard, the training jobs (:func:`load`) and the tables. Adding a data set is therefore one
entry in this module plus its experiment in the config, for instance::

    def moons(n_samples: int = 200, noise: float = 0.2, random_state: int = 0,
              test_size: float = 0.3, split_random_state: int = 0) -> Dataset:
        from sklearn.datasets import make_moons
        from sklearn.model_selection import train_test_split

        x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
        parts = train_test_split(x, y, test_size=test_size, random_state=split_random_state)
        x_train, x_test, y_train, y_test = parts
        return _dataset("moons", x_train, y_train, x_test, y_test, n_classes=2)

    register(DatasetEntry(
        name="moons", generator=moons, title="Moons", n_classes=lambda p: 2,
        split_sizes=fraction_split, split=SPLIT_WORDS,
        parameters={"n_samples": {"type": "integer", "minimum": 2}, ...},
    ))
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "BLOBS_DEFAULTS",
    "Dataset",
    "DatasetEntry",
    "accuracy",
    "blobs",
    "config_schema",
    "get",
    "load",
    "n_classes",
    "names",
    "one_hot",
    "register",
    "split_sizes",
    "fraction_split",
    "toy",
]


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


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class DatasetEntry:
    """One data set the pipeline can train on.

    ``generator(**params)`` builds the :class:`Dataset` (its ``name`` set to ``name``); its
    keyword defaults are the defaults of the ``data:`` parameters. ``parameters`` maps each of
    them to its JSON-schema block (type and bounds; the default is taken from the generator);
    an entry without parameters takes no ``data:`` key. ``n_classes(params)`` and
    ``split_sizes(params)`` (training points, test points) give its size without building it.
    ``split`` says in words how the test set is drawn; ``title`` and ``description`` are how
    the report presents it. ``arrays(**params)`` (optional) returns the same points as NumPy
    arrays ``(x_train, x_test, y_train, y_test)`` without importing torch, for readers that
    only show them (the aggregation); without it, :func:`points` builds the data set.
    """

    name: str
    generator: Callable[..., Dataset]
    n_classes: Callable[[Mapping[str, Any]], int]
    split_sizes: Callable[[Mapping[str, Any]], tuple[int, int]]
    split: str
    title: str
    description: str = ""
    parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    n_features: int = 2
    arrays: Callable[..., tuple[Any, Any, Any, Any]] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The ``data:`` parameters' defaults: the generator's keyword defaults."""
        signature = inspect.signature(self.generator).parameters
        return {key: signature[key].default for key in self.parameters}

    def params(self, experiment: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults, updated by ``experiment["data"]`` where given."""
        return {**self.defaults, **((experiment or {}).get("data") or {})}

    def data_schema(self) -> dict[str, Any] | None:
        """The JSON-schema block of ``data:`` (defaults included); None without parameters."""
        if not self.parameters:
            return None
        defaults = self.defaults
        return {
            "description": f"Parameters of the {self.name} generator; split: {self.split}.",
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {key: {**copy.deepcopy(dict(block)), "default": defaults[key]}
                           for key, block in self.parameters.items()},
        }


_REGISTRY: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` to the registry; the run and the report keep registration order.

    Raises ``ValueError`` naming the field: a name taken or not a lower-case identifier (it
    names folders and a wildcard), or parameters that are not keyword arguments with a default
    of the generator.
    """
    name = entry.name
    if not (name.isidentifier() and name == name.lower()):
        raise ValueError(f"name: got {name!r}; allowed: a lower-case Python identifier")
    if name in _REGISTRY:
        raise ValueError(f"name: got {name!r}; allowed: a name not yet registered "
                         f"(registered: {', '.join(_REGISTRY)})")
    signature = inspect.signature(entry.generator).parameters
    for key in entry.parameters:
        if key not in signature or signature[key].default is inspect.Parameter.empty:
            raise ValueError(f"{name}.parameters: got {key!r}; allowed: keyword arguments "
                             f"with a default of {entry.generator.__name__}()")
    _REGISTRY[name] = entry
    return entry


def names() -> tuple[str, ...]:
    """The registered data sets' names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> DatasetEntry:
    """The entry called ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"dataset: got {name!r}; allowed: {', '.join(_REGISTRY)}") from None


def load(name: str, cfg: Mapping[str, Any] | None = None) -> Dataset:
    """Build a data set by name; the optional ``cfg["data"]`` overrides its generator's defaults.

    ``cfg`` is the data set's checked experiment config (``train.experiments.<name>``).
    """
    entry = get(name)
    return entry.generator(**entry.params(cfg))


def split_sizes(name: str, cfg: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(training points, test points) of a data set, without building it."""
    entry = get(name)
    return entry.split_sizes(entry.params(cfg))


def n_classes(name: str, cfg: Mapping[str, Any] | None = None) -> int:
    """Number of classes of a data set, without building it."""
    entry = get(name)
    return int(entry.n_classes(entry.params(cfg)))


def config_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``workflow/schemas/config.schema.yaml`` (parsed) with the registered data sets filled in.

    Returns a copy in which ``$defs.dataset`` allows the registered names and
    ``train.experiments`` has one key per data set: its experiment (``$defs.experiment``,
    defaults included) and, for an entry with parameters, its ``data:`` block.
    """
    out = copy.deepcopy(dict(schema))
    out["$defs"]["dataset"]["enum"] = list(_REGISTRY)
    experiments = out["properties"]["train"]["properties"]["experiments"]
    experiments["properties"] = {}
    for entry in _REGISTRY.values():
        block: dict[str, Any] = {"$ref": "#/$defs/experiment", "unevaluatedProperties": False,
                                 "default": {}}
        data = entry.data_schema()
        if data is not None:
            block["properties"] = {"data": data}
        experiments["properties"][entry.name] = block
    return out


# ---------------------------------------------------------------------------------------------
# the entries

# The lesson's first-network data, point for point.
TOY_X_TRAIN = [[-2, -1], [-1, -1], [-1, -2], [2, -1], [1, -1], [1, -2], [2, 1], [1, 1], [1, 2]]
TOY_Y_TRAIN = [0, 0, 0, 1, 1, 1, 2, 2, 2]
TOY_X_TEST = [[-2, -2], [2, -2], [2, 2]]
TOY_Y_TEST = [0, 1, 2]
TOY_CLASSES = 3


def toy() -> Dataset:
    """The lesson's first-network data, point for point (labels 0,0,0,1,1,1,2,2,2; test 0,1,2)."""
    return _dataset("toy", TOY_X_TRAIN, TOY_Y_TRAIN, TOY_X_TEST, TOY_Y_TEST, n_classes=TOY_CLASSES)


register(DatasetEntry(
    name="toy",
    generator=toy,
    n_classes=lambda params: TOY_CLASSES,
    split_sizes=lambda params: (len(TOY_Y_TRAIN), len(TOY_Y_TEST)),
    split="fixed: the lesson's 9 training and 3 test points",
    title="Toy data",
    arrays=lambda: (TOY_X_TRAIN, TOY_X_TEST, TOY_Y_TRAIN, TOY_Y_TEST),
    description="The lesson's own data: nine labelled points in three classes. The lesson "
                "trains one hidden layer of four ReLU units on them with full-batch SGD and "
                "cross-entropy, then tests on three more points.",
))


def fraction_split(params: Mapping[str, Any]) -> tuple[int, int]:
    """(training, test) points of ``train_test_split`` with a float ``params["test_size"]``
    of ``params["n_samples"]``: ``n_test = ceil(test_size * n_samples)``, the rest trains."""
    n_test = math.ceil(params["test_size"] * params["n_samples"])
    return params["n_samples"] - n_test, n_test


SPLIT_WORDS = "train_test_split(test_size=test_size, random_state=split_random_state)"


# The lesson's homework call: make_blobs(n_samples=400, centers=4, cluster_std=2, random_state=10)
# then train_test_split(test_size=0.4, random_state=2).
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

    entry = get(name)
    if entry.arrays is not None:
        x_train, x_test, y_train, y_test = entry.arrays(**entry.params(cfg))
    else:
        ds = load(name, cfg)
        x_train, x_test, y_train, y_test = (t.cpu().numpy() for t in
                                            (ds.x_train, ds.x_test, ds.y_train, ds.y_test))
    return {"x_train": np.asarray(x_train, dtype=np.float32),
            "y_train": np.asarray(y_train, dtype=np.int64),
            "x_test": np.asarray(x_test, dtype=np.float32),
            "y_test": np.asarray(y_test, dtype=np.int64)}


_SEED = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}  # NumPy's RandomState seeds
register(DatasetEntry(
    name="blobs",
    generator=blobs,
    arrays=_blobs_split,
    n_classes=lambda params: int(params["centers"]),
    split_sizes=fraction_split,
    split=SPLIT_WORDS,
    title="Blobs",
    description="The homework's second task: Gaussian blobs from `make_blobs`, split into a "
                "training and a test set, learned by the same kind of network.",
    parameters={
        "n_samples": {"type": "integer", "minimum": 2},
        "centers": {"type": "integer", "minimum": 2},
        "cluster_std": {"type": "number", "exclusiveMinimum": 0},
        "random_state": _SEED,
        "test_size": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "split_random_state": _SEED,
    },
))

BLOBS_DEFAULTS: dict[str, Any] = get("blobs").defaults
