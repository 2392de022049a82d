import numpy as np
import pytest
import torch

from mlpbench import data, ensemble
from mlpbench.ensemble import Architecture
from mlpbench.models import MLP, LessonNet
from mlpbench.training import lesson_loop

TOY = data.toy()
BLOBS = data.blobs()


def loop_member(ds, arch, seed, epochs, lr, momentum=0.0, batch_size=None):
    """The lesson's way: seed, build, train one model. Returns (losses, model)."""
    torch.manual_seed(seed)
    net = arch.module()
    gen = torch.Generator().manual_seed(seed)
    losses = lesson_loop(net, ds.x_train, data.one_hot(ds.y_train, ds.n_classes), epochs, lr, momentum, batch_size, gen)
    return losses, net


def flat_params(net: MLP) -> torch.Tensor:
    return torch.cat([torch.cat([lin.weight.detach().reshape(-1), lin.bias.detach()]) for lin in net.linears])


def assert_members_match_loop(ds, arch, seeds, lrs, epochs, momentum=0.0, batch_size=None, atol=1e-6):
    members = [(lr, s) for lr in lrs for s in seeds]
    params = ensemble.init_params(arch, [s for _, s in members])
    run = ensemble.train_ensemble(
        arch, params, ds.x_train, ds.y_train, [lr for lr, _ in members], epochs, [epochs],
        momentum=momentum, batch_size=batch_size, shuffle_seeds=[s for _, s in members],
    )
    assert run.losses.shape == (epochs, len(members))
    for i, (lr, seed) in enumerate(members):
        losses, net = loop_member(ds, arch, seed, epochs, lr, momentum, batch_size)
        np.testing.assert_allclose(
            run.losses[:, i].numpy(), losses, rtol=0, atol=atol, err_msg=f"member lr={lr} seed={seed}"
        )
        torch.testing.assert_close(run.snapshots[epochs][i], flat_params(net), rtol=0, atol=10 * atol)
    assert run.diverged_at.tolist() == [0] * len(members)
    return run


def test_faithfulness_lesson_net_seeds_0_to_3():
    """The issue's check: torch.manual_seed(s); MyNeuralNet; the lesson's loop, 1000 epochs, SGD lr 0.001."""
    seeds = [0, 1, 2, 3]
    arch = Architecture(2, 4, 1, 3)
    run = ensemble.train_ensemble(arch, ensemble.init_params(arch, seeds), TOY.x_train, TOY.y_train, [0.001] * 4, 1000)
    y_train = data.one_hot(TOY.y_train, 3)
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        mynet = LessonNet()
        loss_history = lesson_loop(mynet, TOY.x_train, y_train, n_epochs=1000, lr=0.001)
        assert loss_history.shape == (1000,)
        assert np.max(np.abs(run.losses[:, i].numpy() - loss_history)) <= 1e-6
    # Training does something: every member's loss went down.
    assert (run.losses[-1] < run.losses[0]).all()


def test_toy_several_shapes_and_lrs_match_the_loop():
    assert_members_match_loop(TOY, Architecture(2, 8, 2, 3), seeds=[0, 5], lrs=[0.001, 0.1], epochs=300)


def test_blobs_members_match_the_loop():
    # 16 members: large enough for the (classes, samples) softmax layout on the CPU.
    assert_members_match_loop(BLOBS, Architecture(2, 16, 1, 4), seeds=list(range(8)), lrs=[0.01, 0.1], epochs=60)


def test_blobs_deeper_with_momentum_matches_the_loop():
    assert_members_match_loop(BLOBS, Architecture(2, 8, 3, 4), seeds=[1, 2], lrs=[0.01, 0.05], epochs=40, momentum=0.9)


def test_toy_momentum_matches_the_loop():
    arch = Architecture(2, 4, 1, 3)
    assert_members_match_loop(TOY, arch, seeds=[0, 1, 2], lrs=[0.01, 0.05], epochs=300, momentum=0.9)


@pytest.mark.parametrize(("ds", "batch_size", "epochs"), [(TOY, 4, 100), (BLOBS, 64, 15)])
def test_mini_batches_match_a_loop_with_the_members_generator(ds, batch_size, epochs):
    arch = Architecture(2, 8, 1, ds.n_classes)
    assert_members_match_loop(ds, arch, seeds=[0, 3], lrs=[0.01, 0.05], epochs=epochs, momentum=0.5,
                              batch_size=batch_size, atol=1e-5)


def test_batch_size_at_least_n_is_the_full_batch():
    arch = Architecture(2, 4, 1, 3)
    params = ensemble.init_params(arch, [0, 1])
    full = ensemble.train_ensemble(arch, params, TOY.x_train, TOY.y_train, [0.01] * 2, 50)
    big = ensemble.train_ensemble(
        arch, params, TOY.x_train, TOY.y_train, [0.01] * 2, 50, batch_size=9, shuffle_seeds=[0, 1]
    )
    assert torch.equal(full.losses, big.losses)


def test_checkpoints_equal_separate_shorter_runs():
    arch = Architecture(2, 8, 2, 4)
    params = ensemble.init_params(arch, [0, 1, 2])
    lrs = [0.05] * 3
    long = ensemble.train_ensemble(arch, params, BLOBS.x_train, BLOBS.y_train, lrs, 90, [30, 60, 90])
    assert sorted(long.snapshots) == [30, 60, 90]
    for e in (30, 60):
        short = ensemble.train_ensemble(arch, params, BLOBS.x_train, BLOBS.y_train, lrs, e, [e])
        assert torch.equal(short.snapshots[e], long.snapshots[e])
        assert torch.equal(short.losses, long.losses[:e])
    assert not torch.equal(long.snapshots[30], long.snapshots[90])


def test_divergence_is_recorded_and_frozen_while_others_go_on():
    arch = Architecture(2, 4, 1, 3)
    seeds = [0, 1, 2]
    lrs = [0.001] * 3 + [100.0] * 3
    params = ensemble.init_params(arch, seeds + seeds)
    run = ensemble.train_ensemble(arch, params, TOY.x_train, TOY.y_train, lrs, 200, [100, 200])
    diverged = run.diverged_at.tolist()
    assert diverged[:3] == [0, 0, 0]
    assert all(0 < d < 100 for d in diverged[3:])
    for i, d in enumerate(diverged[3:], start=3):
        col = run.losses[:, i]
        assert torch.isfinite(col[: d - 1]).all() and not torch.isfinite(col[d - 1])
        assert torch.isnan(col[d:]).all()  # no loss history once frozen
        # The same member trained alone diverges at the same epoch, with the same losses up to it.
        alone, _ = loop_member(TOY, arch, seeds[i - 3], d, 100.0)
        np.testing.assert_allclose(col[: d - 1].numpy(), alone[: d - 1], rtol=1e-5)
        assert not np.isfinite(alone[d - 1])
    # Frozen: a diverged member's weights no longer change.
    assert torch.equal(run.snapshots[100][3:], run.snapshots[200][3:])
    # The healthy members are exactly what they are without the diverging ones beside them.
    healthy = ensemble.train_ensemble(arch, params[:3], TOY.x_train, TOY.y_train, lrs[:3], 200, [200])
    assert torch.equal(healthy.losses, run.losses[:, :3])
    assert torch.equal(healthy.snapshots[200], run.snapshots[200][:3])


def test_forward_and_grad_norms_agree_with_autograd_on_member_modules():
    arch = Architecture(2, 8, 3, 4)
    params = ensemble.init_params(arch, [3, 4])
    params = ensemble.train_ensemble(arch, params, BLOBS.x_train, BLOBS.y_train, [0.05, 0.05], 20, [20]).snapshots[20]
    y = data.one_hot(BLOBS.y_train, 4)
    logits = ensemble.forward(arch, params, BLOBS.x_train)
    losses = ensemble.member_losses(logits, y)
    norms = ensemble.weight_grad_norms(arch, params, BLOBS.x_train, y)
    assert norms.shape == (2, 4)
    for i in range(2):
        net = ensemble.member_module(arch, params, i)
        out = net(BLOBS.x_train)
        torch.testing.assert_close(logits[i], out.detach(), rtol=0, atol=1e-6)
        loss = torch.nn.CrossEntropyLoss()(out, y)
        loss.backward()
        assert losses[i].item() == pytest.approx(loss.item(), abs=1e-6)
        expected = torch.stack([lin.weight.grad.norm() for lin in net.linears])
        torch.testing.assert_close(norms[i], expected, rtol=1e-5, atol=1e-8)


def test_init_params_is_the_seeded_mlp_and_leaves_global_rng_alone():
    arch = Architecture(2, 16, 2, 4)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    params = ensemble.init_params(arch, [7, 8])
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(8)
    assert torch.equal(params[1], flat_params(MLP(2, 16, 2, 4)))
    assert params.shape == (2, arch.size) and arch.size == 2 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4


def test_train_ensemble_rejects_inconsistent_arguments():
    arch = Architecture(2, 4, 1, 3)
    params = ensemble.init_params(arch, [0, 1])
    with pytest.raises(ValueError, match="lrs"):
        ensemble.train_ensemble(arch, params, TOY.x_train, TOY.y_train, [0.1], 10)
    with pytest.raises(ValueError, match="checkpoints"):
        ensemble.train_ensemble(arch, params, TOY.x_train, TOY.y_train, [0.1, 0.1], 10, [20])
    with pytest.raises(ValueError, match="shuffle_seeds"):
        ensemble.train_ensemble(arch, params, TOY.x_train, TOY.y_train, [0.1, 0.1], 10, batch_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_ensemble_matches_cpu_ensemble():
    arch = Architecture(2, 32, 2, 4)
    params = ensemble.init_params(arch, list(range(8)))
    cpu = ensemble.train_ensemble(arch, params, BLOBS.x_train, BLOBS.y_train, [0.01] * 8, 200, [200])
    x, y = BLOBS.x_train.cuda(), BLOBS.y_train.cuda()
    gpu = ensemble.train_ensemble(arch, params.cuda(), x, y, [0.01] * 8, 200, [200])
    torch.testing.assert_close(gpu.losses.cpu(), cpu.losses, rtol=0, atol=1e-4)
    torch.testing.assert_close(gpu.snapshots[200].cpu(), cpu.snapshots[200], rtol=0, atol=1e-3)
