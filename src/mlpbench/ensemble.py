"""Many members (seeds x learning rates) of one MLP shape, trained as one batched model.

Every member's parameters live in one row of a (members, size) buffer; a layer sees them as
(members, out, in) weights, laid out like ``nn.Linear.weight``, and (members, out) biases, so one
``torch.baddbmm`` runs a layer for every member at once.

The backward pass is written by hand rather than left to autograd, whose graph building is most
of the time at these sizes. It issues the products autograd derives for ``nn.Linear`` (weight
gradient ``grad^T @ input``, input gradient ``grad @ weight``, with the same operand layouts)
and autograd's own ``_log_softmax_backward_data`` and ``threshold_backward`` kernels, so each
member computes what the lesson's loop computes for its seed. Above a small size ATen splits a
batched product into one ``addmm`` per member -- the call ``nn.Linear`` makes -- and on the CPU
members then match the loop bit for bit (every blobs shape tried, and the lesson's toy network);
below it ATen uses its own small-product kernel, which can round differently from the BLAS call
(other toy shapes, tiny mini-batches): a few 1e-7 apart in the loss after 1000 epochs.

Each member's loss is its own mean cross-entropy and its gradient comes from that loss alone:
nothing is summed or averaged across members.

A member whose loss becomes NaN/inf is marked diverged at that epoch and frozen (its updates are
masked out on the device, without a host sync); the others carry on, unaffected.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from mlpbench.devices import sync
from .models import MLP

# Private ATen ops (their out= variants), used because they are the kernels autograd runs for
# log_softmax and ReLU: calling them directly keeps every member identical to the one-model loop.
_log_softmax = torch.ops.aten._log_softmax.out
_log_softmax_backward = torch.ops.aten._log_softmax_backward_data.out
_threshold_backward = torch.ops.aten.threshold_backward.grad_input


@dataclass(frozen=True)
class Architecture:
    """An MLP shape: ``depth`` hidden layers of ``width`` units between ``n_in`` and ``n_out``."""

    n_in: int
    width: int
    depth: int
    n_out: int

    @property
    def layer_dims(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each Linear layer, input layer first."""
        sizes = [self.n_in] + [self.width] * self.depth + [self.n_out]
        return list(zip(sizes[:-1], sizes[1:]))

    @property
    def size(self) -> int:
        """Parameters per member."""
        return sum(i * o + o for i, o in self.layer_dims)

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight (M, out, in), bias (M, out)) views of each layer into a (M, size) buffer."""
        out, offset = [], 0
        m = flat.shape[0]
        for fan_in, fan_out in self.layer_dims:
            w = flat[:, offset : offset + fan_in * fan_out].view(m, fan_out, fan_in)
            offset += fan_in * fan_out
            b = flat[:, offset : offset + fan_out]
            offset += fan_out
            out.append((w, b))
        return out

    def module(self) -> MLP:
        return MLP(self.n_in, self.width, self.depth, self.n_out)


def init_params(
    arch: Architecture, seeds: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Row i holds exactly the weights ``torch.manual_seed(seeds[i]); MLP(...)`` creates.

    Weights are drawn on the CPU (as the lesson does before ``.to(device)``); the global RNG state
    is restored afterwards so building an ensemble does not disturb the caller's randomness.
    """
    flat = torch.empty(len(seeds), arch.size)
    layers = arch.views(flat)
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            net = arch.module()
            for (w, b), lin in zip(layers, net.linears):
                w[i].copy_(lin.weight.detach())
                b[i].copy_(lin.bias.detach())
    return flat.to(device)


def member_module(arch: Architecture, params: torch.Tensor, member: int) -> MLP:
    """A stand-alone ``MLP`` (on the CPU) holding one member's current weights."""
    net = arch.module()
    with torch.no_grad():
        for (w, b), lin in zip(arch.views(params.detach().cpu()), net.linears):
            lin.weight.copy_(w[member])
            lin.bias.copy_(b[member])
    return net


def forward(arch: Architecture, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits (M, n, n_out) of every member for inputs ``x`` (n, n_in), shared by all members."""
    m = params.shape[0]
    a = x.expand(m, *x.shape)
    layers = arch.views(params)
    for i, (w, b) in enumerate(layers):
        a = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
        if i < len(layers) - 1:
            a = a.relu()
    return a


def member_losses(logits: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, computed as ``CrossEntropyLoss`` does for float targets."""
    n = logits.shape[-2]
    return (torch.log_softmax(logits, -1) * y_onehot).sum((-2, -1)).neg().div(n)


# On the CPU, log_softmax (and its backward) over a short innermost dimension (a handful of
# classes) is about 20x slower than over an outer one. For large ensembles the logits are
# therefore transposed to (M, classes, n) around those two kernels -- but only where a probe
# shows the two kernels agree bit for bit at that shape (they do when their vectorised loops
# cover every element; e.g. with AVX-512, n a multiple of 16 and fewer than 16 classes).
_CLASSES_FIRST_MIN_ELEMENTS = 4096


@functools.lru_cache(maxsize=None)
def _classes_first_exact(m: int, n: int, c: int, dtype: torch.dtype) -> bool:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(m, n, c, generator=gen, dtype=dtype) * 4
    g = torch.randn(m, n, c, generator=gen, dtype=dtype)
    lsm = torch.log_softmax(z, 2)
    lsm_t = torch.log_softmax(z.transpose(1, 2).contiguous(), 1)
    dz = torch.ops.aten._log_softmax_backward_data(g, lsm, 2, dtype)
    dz_t = torch.ops.aten._log_softmax_backward_data(g.transpose(1, 2).contiguous(), lsm_t, 1, dtype)
    return torch.equal(lsm, lsm_t.transpose(1, 2)) and torch.equal(dz, dz_t.transpose(1, 2))


def _use_classes_first(m: int, n: int, c: int, like: torch.Tensor) -> bool:
    return (
        like.device.type == "cpu"
        and m * n * c >= _CLASSES_FIRST_MIN_ELEMENTS
        and _classes_first_exact(m, n, c, like.dtype)
    )


class _Workspace:
    """Every intermediate of one forward/backward pass, allocated once.

    Fresh multi-megabyte tensors each epoch would cost a page fault per 4 KiB (the CPU allocator
    hands large blocks back to the OS), which at these sizes takes longer than the arithmetic.
    """

    def __init__(self, arch: Architecture, m: int, n: int, like: torch.Tensor):
        def new(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, dtype=like.dtype, device=like.device)

        c = arch.n_out
        self.classes_first = classes_first = _use_classes_first(m, n, c, like)
        self.z = [new(m, n, fan_out) for _, fan_out in arch.layer_dims]  # pre-activations, then ReLU in place
        self.da = [new(m, n, fan_in) for fan_in, _ in arch.layer_dims]  # da[i]: gradient w.r.t. layer i's input
        self.prod = new(m, n, c)
        self.dz = new(m, n, c)
        self.lsm = new(m, c, n) if classes_first else new(m, n, c)
        self.dz_t = new(m, c, n) if classes_first else None
        self.z_t = new(m, c, n) if classes_first else None


class _Program:
    """Forward + hand-written backward for one ensemble, with every view built once."""

    def __init__(self, arch: Architecture, params: torch.Tensor, grads: torch.Tensor):
        p_layers, g_layers = arch.views(params), arch.views(grads)
        self.arch = arch
        self.w = [w for w, _ in p_layers]  # (M, out, in), as nn.Linear.weight
        self.b = [b.unsqueeze(1) for _, b in p_layers]  # broadcast over samples, as nn.Linear's bias
        self.w_t = [w.transpose(1, 2) for w in self.w]  # what nn.Linear multiplies by
        self.gw = [w for w, _ in g_layers]
        self.gb = [b for _, b in g_layers]
        self.n_layers = len(self.w)
        self.m = params.shape[0]
        self.like = params
        self.workspaces: dict[int, _Workspace] = {}

    def workspace(self, n: int) -> _Workspace:
        ws = self.workspaces.get(n)
        if ws is None:
            ws = self.workspaces[n] = _Workspace(self.arch, self.m, n, self.like)
        return ws

    def grad_out(self, y: torch.Tensor) -> torch.Tensor:
        """``-y / n`` as autograd hands it to log_softmax's backward, in the layout ``run`` wants."""
        n = y.shape[1]
        g = y * _neg_inv(n, y)
        return g.transpose(1, 2).contiguous() if self.workspace(n).classes_first else g

    def run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        grad_out: torch.Tensor,
        loss_sum: torch.Tensor,
    ) -> None:
        """Write sum(log_softmax * y) per member into ``loss_sum`` and the gradients into the grad buffer.

        ``x`` is (M, n, in) (an expanded view is fine), ``y`` the (M, n, classes) one-hot targets
        and ``grad_out`` what :meth:`grad_out` makes of them.
        """
        ws = self.workspace(x.shape[1])
        w, b, last = self.w, self.b, self.n_layers - 1
        acts = [x]
        for i in range(self.n_layers):
            z = torch.baddbmm(b[i], acts[i], self.w_t[i], out=ws.z[i])
            if i < last:
                acts.append(z.relu_())
        if ws.classes_first:
            ws.z_t.copy_(z.transpose(1, 2))
            _log_softmax(ws.z_t, 1, False, out=ws.lsm)
            # Written (M, n, classes)-contiguous, so the sum adds the terms in CrossEntropyLoss's order.
            torch.mul(ws.lsm.transpose(1, 2), y, out=ws.prod)
            _log_softmax_backward(grad_out, ws.lsm, 1, z.dtype, out=ws.dz_t)
            dz = ws.dz.copy_(ws.dz_t.transpose(1, 2))
        else:
            _log_softmax(z, 2, False, out=ws.lsm)
            torch.mul(ws.lsm, y, out=ws.prod)
            dz = _log_softmax_backward(grad_out, ws.lsm, 2, z.dtype, out=ws.dz)
        torch.sum(ws.prod, (1, 2), out=loss_sum)
        for i in range(last, -1, -1):
            torch.bmm(dz.transpose(1, 2), acts[i], out=self.gw[i])
            torch.sum(dz, 1, out=self.gb[i])
            if i:
                da = torch.bmm(dz, w[i], out=ws.da[i])
                dz = _threshold_backward(da, acts[i], 0, grad_input=da)


def _neg_inv(n: int, like: torch.Tensor) -> torch.Tensor:
    # autograd's value for d(mean)/d(sum): 1/n in float32, then negated by the loss's minus sign.
    return -(torch.ones((), dtype=like.dtype, device=like.device) / n)


def loss_and_grad(
    arch: Architecture, params: torch.Tensor, x: torch.Tensor, y_onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's full-batch mean cross-entropy (M,) and its gradient (M, size)."""
    m, n = params.shape[0], x.shape[0]
    grads = torch.empty_like(params)
    loss_sum = torch.empty(m, dtype=params.dtype, device=params.device)
    xe = x.expand(m, *x.shape)
    y = y_onehot.expand(m, *y_onehot.shape)
    prog = _Program(arch, params, grads)
    prog.run(xe, y, prog.grad_out(y), loss_sum)
    return loss_sum.neg().div(n), grads


def weight_grad_norms(
    arch: Architecture, params: torch.Tensor, x: torch.Tensor, y_onehot: torch.Tensor
) -> torch.Tensor:
    """(M, depth + 1) Frobenius norms of each Linear weight's gradient of the member's loss."""
    _, grads = loss_and_grad(arch, params, x, y_onehot)
    return torch.stack([torch.linalg.vector_norm(w, dim=(1, 2)) for w, _ in arch.views(grads)], 1)


@dataclass
class EnsembleRun:
    """What one training run returns; tensors stay on the training device."""

    losses: torch.Tensor  # (epochs, M) float32: loss before the step of each epoch; NaN after divergence
    snapshots: dict[int, torch.Tensor]  # checkpoint epoch -> (M, size) parameters after that many epochs
    diverged_at: torch.Tensor  # (M,) int64: epoch whose loss was first non-finite, 0 if never
    time_s: float  # wall time of the epoch loop (CUDA synchronised)


def _lr_groups(lrs: Sequence[float]) -> list[tuple[slice, float]]:
    """Maximal runs of members sharing a learning rate: one fused update per run keeps
    SGD's ``param.add_(grad, alpha=-lr)`` arithmetic (and its rounding) per member."""
    groups: list[tuple[slice, float]] = []
    start = 0
    for i in range(1, len(lrs) + 1):
        if i == len(lrs) or lrs[i] != lrs[start]:
            groups.append((slice(start, i), float(lrs[start])))
            start = i
    return groups


def train_ensemble(
    arch: Architecture,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: Sequence[float],
    epochs: int,
    checkpoints: Iterable[int] = (),
    momentum: float = 0.0,
    batch_size: int | None = None,
    shuffle_seeds: Sequence[int] | None = None,
) -> EnsembleRun:
    """Train every member with SGD for ``epochs`` epochs, as the lesson's loop would one by one.

    ``params`` (M, size) is the initial state (not modified); ``x`` (n, n_in) and integer labels
    ``y`` (n,) are shared by all members; ``lrs`` gives each member's learning rate. Momentum
    follows ``torch.optim.SGD`` (dampening 0, no Nesterov). ``batch_size`` None (or >= n) is the
    lesson's full batch; otherwise every epoch member i visits the data in the order of
    ``torch.randperm(n, generator=g_i)`` where ``g_i`` is a CPU generator seeded with
    ``shuffle_seeds[i]``, in batches of ``batch_size`` (last one smaller), and its epoch loss is
    the sample-weighted mean of its batch losses.
    """
    m, n = params.shape[0], x.shape[0]
    if len(lrs) != m:
        raise ValueError(f"lrs: got {len(lrs)} values for {m} members")
    if epochs < 1:
        raise ValueError(f"epochs: got {epochs}; allowed: integers >= 1")
    checkpoints = sorted(set(checkpoints))
    if checkpoints and not 1 <= checkpoints[0] <= checkpoints[-1] <= epochs:
        raise ValueError(f"checkpoints: got {checkpoints}; allowed: epochs between 1 and {epochs}")
    full_batch = batch_size is None or batch_size >= n
    if not full_batch and (shuffle_seeds is None or len(shuffle_seeds) != m):
        raise ValueError("shuffle_seeds: mini-batches need one shuffle seed per member")

    device = params.device
    params = params.clone()
    grads = torch.zeros_like(params)
    prog = _Program(arch, params, grads)
    y_onehot = torch.nn.functional.one_hot(y, arch.n_out).to(params.dtype)
    rec = torch.empty(epochs, m, dtype=params.dtype, device=device)
    alive = torch.ones(m, dtype=torch.bool, device=device)
    inf = torch.tensor(float("inf"), dtype=params.dtype, device=device)
    zero = torch.zeros((), dtype=params.dtype, device=device)
    # Views built once, so that the epoch loop only launches kernels; one update per run of
    # members sharing a learning rate.
    buf = torch.empty_like(params) if momentum else grads
    masked = torch.empty_like(params)
    groups = [(params[s], buf[s], alive[s].unsqueeze(1), masked[s], lr) for s, lr in _lr_groups(lrs)]
    snapshots: dict[int, torch.Tensor] = {}
    snap_at = set(checkpoints)
    first_step = True

    def sgd_step() -> None:
        """torch.optim.SGD's update, skipped (masked, no host sync) for members not ``alive``."""
        nonlocal first_step
        if momentum:
            if first_step:
                buf.copy_(grads)
            else:
                buf.mul_(momentum).add_(grads)
            first_step = False
        for p, step, keep, out, lr in groups:
            p.add_(torch.where(keep, step, zero, out=out), alpha=-lr)

    sync(device)
    t0 = time.perf_counter()
    if full_batch:
        xe = x.expand(m, *x.shape)
        ye = y_onehot.expand(m, *y_onehot.shape)
        grad_out = prog.grad_out(ye)
        for epoch, row in enumerate(rec.unbind(0), start=1):
            prog.run(xe, ye, grad_out, row)  # row: sum(log_softmax * y), scaled after the loop
            alive.logical_and_(row.abs() < inf)
            sgd_step()
            if epoch in snap_at:
                snapshots[epoch] = params.clone()
    else:
        alive_epochs = torch.zeros(m, dtype=torch.int64, device=device)
        gens = [torch.Generator().manual_seed(int(s)) for s in shuffle_seeds]
        batches = [(start, min(batch_size, n - start)) for start in range(0, n, batch_size)]
        loss_sum = torch.empty(m, dtype=params.dtype, device=device)
        for epoch, row in enumerate(rec.unbind(0), start=1):
            row.zero_()
            order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
            for start, nb in batches:
                idx = order[:, start : start + nb]
                xb, yb = x[idx], y_onehot[idx]
                prog.run(xb, yb, prog.grad_out(yb), loss_sum)
                loss = loss_sum.neg().div(nb)  # each member's CrossEntropyLoss on this batch
                alive.logical_and_(loss.abs() < inf)
                sgd_step()
                row.add_(loss * nb)
            alive_epochs.add_(alive)
            if epoch in snap_at:
                snapshots[epoch] = params.clone()
    sync(device)
    time_s = time.perf_counter() - t0

    epoch_idx = torch.arange(1, epochs + 1, device=device).unsqueeze(1)
    if full_batch:
        rec.neg_().div_(n)  # sum(log_softmax * y) -> mean cross-entropy, as CrossEntropyLoss does
        # A member dies at its first non-finite loss, so that row is its divergence epoch.
        bad = ~torch.isfinite(rec)
        diverged_at = torch.where(bad.any(0), bad.int().argmax(0) + 1, 0)
    else:
        rec.div_(n)
        diverged_at = torch.where(alive, 0, alive_epochs + 1)
    # After divergence a frozen member has no loss history: NaN, not a repeated value.
    rec.masked_fill_((diverged_at > 0) & (epoch_idx > diverged_at), float("nan"))
    return EnsembleRun(rec, snapshots, diverged_at, time_s)
