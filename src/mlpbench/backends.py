"""The array libraries the matmul stage times: one registry entry (:class:`Backend`) each.

An entry says everything the stage needs to time a library exactly as it times every other
(:mod:`mlpbench.matmul` holds no library-specific code):

* ``devices``: where it runs ("cpu", "cuda"); the workflow's ``device`` wildcard of the matmul
  rule allows the devices of the registered backends (:func:`devices`);
* ``statements``: the Python statement timed for each kind of row: ``matmul`` (``z = x @ y``
  into a preallocated ``z``) and ``copy`` (the bandwidth reference, ``dst`` from ``src``) always,
  ``h2d``/``d2h`` (host -> device copy of ``y`` from pageable memory, device -> host copy of
  ``z``) where the device is not the CPU, and optionally the lesson's GPU pitfalls:
  ``h2d_pinned`` (the copy of ``y`` from page-locked host memory), ``matmul_nosync`` (the
  product timed without synchronising, as the lesson's ``%timeit`` did; the stage drops the
  sync for this kind) and ``matmul_tf32`` (the float32 product with TF32 tensor cores allowed);
* ``context(kind, device)``: a context manager the measurement of that kind runs in (for
  torch on CUDA: TF32 off for ``matmul``, on for ``matmul_tf32``); by default none;
  ``context_note(kind, device)`` says what it sets, for the ``method`` column (or None);
* ``operands(spec)``: creates and fills (touches every page of) the names its statements use,
  for one :class:`OperandSpec`; nothing of it is timed;
* ``unavailable(device)``: why it cannot run there (no GPU, say), or None; a library that is not
  installed is reported by :meth:`Backend.unavailable_reason` before this is asked;
* ``sync(device)``: the :class:`mlpbench.timing.Sync` for a device that runs work
  asynchronously, else None; ``threads()``: its :class:`mlpbench.timing.ThreadControl`;
* ``release(device)``: frees cached memory after a measurement; ``label``: its name in figures
  and in the report; ``version()``: the library's version string;
* ``flush_with``: the library (``torch`` or ``numpy``, :data:`mlpbench.caches.LIBRARIES`) that
  empties the caches before each call of a cold timing (kind ``matmul_cold``).

Importing this module imports neither NumPy nor torch: the workflow reads the backends' devices
when it builds the job graph. Each entry imports its library inside its functions.

Adding a backend (CuPy, JAX) is one entry in this module plus an extra in ``pyproject.toml``.
For CuPy, for instance: an extra ``cupy = ["cupy-cuda12x"]``, and here::

    def _cupy_operands(spec):
        import cupy as cp
        dt = cp.dtype(spec.dtype)
        if spec.kind == "copy":
            return {"src": cp.full(spec.count, 1.0, dt), "dst": cp.zeros(spec.count, dt)}
        ...  # "x", "y", "z" (and "y_host"/"y_dev", "z_dev"/"z_host" for h2d/d2h)

    register(Backend(
        name="cupy", label="CuPy", module="cupy", extra="cupy", devices=("cuda",),
        statements={"matmul": "cp.matmul(x, y, out=z)", "copy": "cp.copyto(dst, src)", ...},
        operands=_cupy_operands,
        unavailable=_cupy_unavailable,  # cupy.cuda.runtime.getDeviceCount() == 0, say
        sync=lambda device: Sync(cupy.cuda.Device().synchronize, "cuda",
                                 "cupy.cuda.Device().synchronize()"),
        threads=_torch_and_blas,  # the host-side pools; the GPU has none to set
        release=lambda device: cupy.get_default_memory_pool().free_all_blocks(),
        version=lambda: cupy.__version__,
    ))

The stage then times it on every device it lists, its rows carry ``backend = "cupy"``, and
where CuPy is not installed (or has no GPU) its rows say "unavailable" and why.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from mlpbench.timing import Sync, ThreadControl

__all__ = [
    "KNOWN_DEVICES",
    "Backend",
    "OperandSpec",
    "backends",
    "by_device",
    "devices",
    "get",
    "label",
    "register",
    "versions",
]

KNOWN_DEVICES = ("cpu", "cuda")
_REQUIRED_KINDS = ("matmul", "copy")
_KINDS = ("matmul", "copy", "h2d", "d2h", "h2d_pinned", "matmul_nosync", "matmul_tf32")


class OperandSpec(NamedTuple):
    """What one measurement needs: ``kind`` (one of the statement kinds), where, which element
    type.

    ``x`` is (m, k), ``y`` (k, n) and ``z`` (m, n); a copy moves ``count`` elements. ``seed``
    seeds the random fill, so every run times the same values.
    """

    kind: str
    device: str
    dtype: str  # "float32" or "float64"
    m: int
    k: int
    n: int
    count: int
    seed: int


@dataclass(frozen=True)
class Backend:
    """One array library as the matmul stage times it (see the module docstring)."""

    name: str
    label: str
    module: str
    devices: tuple[str, ...]
    statements: Mapping[str, str]
    operands: Callable[[OperandSpec], dict[str, Any]]
    unavailable: Callable[[str], str | None]
    sync: Callable[[str], Sync | None]
    threads: Callable[[], ThreadControl]
    version: Callable[[], str]
    release: Callable[[str], None] = field(default=lambda device: None)
    context: Callable[[str, str], AbstractContextManager[None]] = field(
        default=lambda kind, device: nullcontext())
    context_note: Callable[[str, str], str | None] = field(default=lambda kind, device: None)
    extra: str | None = None  # the pyproject extra that installs the library, if it is optional
    # The library that empties the caches before a cold call (mlpbench.caches.LIBRARIES): the
    # backend's own where it can, so that no other thread pool spins beside the timed threads.
    flush_with: str = "torch"

    def unavailable_reason(self, device: str) -> str | None:
        """None when this backend can run on ``device`` here, else the reason (one line)."""
        if importlib.util.find_spec(self.module) is None:
            how = f" (pip install 'mlpbench[{self.extra}]')" if self.extra else ""
            return f"{self.label} unavailable: module {self.module!r} is not installed{how}"
        return self.unavailable(device)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (in order: the stage times backends in this order).

    Raises ``ValueError`` naming the field for a name already taken, a device not in
    ``KNOWN_DEVICES``, or statements that miss ``matmul``/``copy`` or name an unknown kind.
    """
    if not backend.name.isidentifier():
        raise ValueError(f"name: got {backend.name!r}; allowed: a Python identifier")
    if backend.name in _REGISTRY:
        raise ValueError(f"name: got {backend.name!r}; allowed: a name not yet registered "
                         f"(registered: {', '.join(_REGISTRY)})")
    unknown = [d for d in backend.devices if d not in KNOWN_DEVICES]
    if not backend.devices or unknown:
        raise ValueError(f"{backend.name}.devices: got {list(backend.devices)!r}; allowed: a "
                         f"non-empty list from {list(KNOWN_DEVICES)}")
    if backend.flush_with not in ("torch", "numpy"):  # mlpbench.caches.LIBRARIES
        raise ValueError(f"{backend.name}.flush_with: got {backend.flush_with!r}; allowed: "
                         "'torch' or 'numpy'")
    missing = [k for k in _REQUIRED_KINDS if k not in backend.statements]
    extra = [k for k in backend.statements if k not in _KINDS]
    if missing or extra:
        raise ValueError(f"{backend.name}.statements: got kinds {list(backend.statements)!r}; "
                         f"allowed: {list(_REQUIRED_KINDS)} and optionally "
                         f"{', '.join(k for k in _KINDS if k not in _REQUIRED_KINDS)}")
    _REGISTRY[backend.name] = backend
    return backend


def backends() -> tuple[Backend, ...]:
    """Every registered backend, in registration order."""
    return tuple(_REGISTRY.values())


def get(name: str) -> Backend:
    """The backend called ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: got {name!r}; allowed: {', '.join(_REGISTRY)}") from None


def by_device() -> dict[str, tuple[str, ...]]:
    """Device -> names of the backends that run on it, e.g. cpu: (numpy, torch), cuda: (torch,)."""
    return {d: tuple(b.name for b in _REGISTRY.values() if d in b.devices) for d in devices()}


def devices() -> tuple[str, ...]:
    """Devices at least one backend runs on, in ``KNOWN_DEVICES`` order."""
    return tuple(d for d in KNOWN_DEVICES if any(d in b.devices for b in _REGISTRY.values()))


def label(name: str) -> str:
    """How figures and the report name a backend ("NumPy"); an unregistered name as it is."""
    backend = _REGISTRY.get(name)
    return backend.label if backend is not None else name


def versions() -> dict[str, str | None]:
    """Backend name -> its library's version; None where the library is not installed."""
    return {b.name: (b.version() if importlib.util.find_spec(b.module) else None)
            for b in _REGISTRY.values()}


# ---------------------------------------------------------------------------------------------
# the entries


def _torch_and_blas() -> ThreadControl:
    from mlpbench.timing import TORCH_AND_BLAS_THREADS

    return TORCH_AND_BLAS_THREADS


def _numpy_operands(spec: OperandSpec) -> dict[str, Any]:
    import numpy as np

    dt = np.dtype(spec.dtype)
    if spec.kind == "copy":
        return {"np": np, "src": np.full(spec.count, 1.0, dt), "dst": np.full(spec.count, 0.0, dt)}
    m, k, n = spec.m, spec.k, spec.n
    rng = np.random.default_rng(spec.seed)
    return {"np": np, "x": rng.random((m, k), dtype=dt), "y": rng.random((k, n), dtype=dt),
            "z": np.full((m, n), 0.0, dt)}  # np.zeros would leave pages untouched


def _numpy_version() -> str:
    import numpy as np

    return np.__version__


# NumPy has no GPU; its own thread pool is its BLAS, which threadpoolctl sets.
register(Backend(
    name="numpy",
    label="NumPy",
    module="numpy",
    devices=("cpu",),
    statements={"matmul": "np.matmul(x, y, out=z)", "copy": "np.copyto(dst, src)"},
    operands=_numpy_operands,
    unavailable=lambda device: None,
    sync=lambda device: None,
    threads=_torch_and_blas,
    version=_numpy_version,
    flush_with="numpy",
))


def _torch_operands(spec: OperandSpec) -> dict[str, Any]:
    import torch

    dt = getattr(torch, spec.dtype)
    dev = torch.device(spec.device)
    m, k, n = spec.m, spec.k, spec.n
    gen = torch.Generator(device=dev).manual_seed(spec.seed)

    def rand(*size: int, device: torch.device = dev) -> torch.Tensor:
        g = gen if device == dev else torch.Generator().manual_seed(spec.seed)
        return torch.rand(*size, dtype=dt, device=device, generator=g)

    if spec.kind == "copy":
        return {"src": torch.full((spec.count,), 1.0, dtype=dt, device=dev),
                "dst": torch.zeros(spec.count, dtype=dt, device=dev)}
    if spec.kind == "h2d":  # pageable host memory, as the lesson's y.to('cuda')
        return {"y_host": rand(k, n, device=torch.device("cpu")),
                "y_dev": torch.zeros(k, n, dtype=dt, device=dev)}
    if spec.kind == "h2d_pinned":  # page-locked host memory: the GPU reads it by DMA directly
        return {"y_host": rand(k, n, device=torch.device("cpu")).pin_memory(),
                "y_dev": torch.zeros(k, n, dtype=dt, device=dev)}
    if spec.kind == "d2h":  # into pageable host memory, as the lesson's z.cpu()
        return {"z_dev": rand(m, n), "z_host": torch.zeros(m, n, dtype=dt)}
    return {"x": rand(m, k), "y": rand(k, n), "z": torch.zeros(m, n, dtype=dt, device=dev)}


def _torch_unavailable(device: str) -> str | None:
    if device == "cpu":
        return None
    from mlpbench.devices import cuda_unavailable_reason

    return cuda_unavailable_reason()


def _torch_sync(device: str) -> Sync | None:
    if device == "cpu":
        return None
    from mlpbench.timing import CUDA_SYNC

    return CUDA_SYNC


def _torch_release(device: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()  # nothing queued by an unsynchronised timing runs on
        torch.cuda.empty_cache()  # free big operands before the next job allocates its own


@contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    """Run the block with ``torch.backends.cuda.matmul.allow_tf32`` set, then restore it.

    torch's default is False since 1.12 (float32 products on CUDA in full float32 precision;
    see the "TensorFloat-32 (TF32) on Ampere (and later) devices" note of torch's CUDA
    semantics docs); True lets cuBLAS use TF32 tensor cores (10-bit mantissa inputs).
    """
    import torch

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _torch_context(kind: str, device: str) -> AbstractContextManager[None]:
    if device != "cuda":
        return nullcontext()
    if kind == "matmul_tf32":
        return _tf32(True)
    if kind in ("matmul", "matmul_nosync"):
        return _tf32(False)  # torch's default, stated rather than inherited
    return nullcontext()


def _torch_context_note(kind: str, device: str) -> str | None:
    if device != "cuda" or kind not in ("matmul", "matmul_nosync", "matmul_tf32"):
        return None
    if kind == "matmul_tf32":
        return "TF32 on: torch.backends.cuda.matmul.allow_tf32 = True"
    return "TF32 off: torch.backends.cuda.matmul.allow_tf32 = False (torch's default since 1.12)"


def _torch_version() -> str:
    import torch

    return torch.__version__  # keeps the build tag (+cpu, +cu130)


register(Backend(
    name="torch",
    label="torch",
    module="torch",
    devices=("cpu", "cuda"),
    statements={
        "matmul": "torch.matmul(x, y, out=z)",
        "copy": "dst.copy_(src)",
        "h2d": "y_dev.copy_(y_host)",
        "d2h": "z_host.copy_(z_dev)",
        "h2d_pinned": "y_dev.copy_(y_host)",
        "matmul_nosync": "torch.matmul(x, y, out=z)",
        "matmul_tf32": "torch.matmul(x, y, out=z)",
    },
    operands=_torch_operands,
    unavailable=_torch_unavailable,
    sync=_torch_sync,
    threads=_torch_and_blas,
    release=_torch_release,
    context=_torch_context,
    context_note=_torch_context_note,
    version=_torch_version,
))
