import pytest
import torch

from mlpbench.models import MLP, LessonNet


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mlp_draws_the_lesson_nets_weights(seed):
    torch.manual_seed(seed)
    lesson = LessonNet()
    torch.manual_seed(seed)
    mlp = MLP(2, 4, 1, 3)
    lesson_params = [p.detach() for p in lesson.parameters()]
    mlp_params = [p.detach() for p in mlp.parameters()]
    assert [p.shape for p in mlp_params] == [p.shape for p in lesson_params]
    for a, b in zip(mlp_params, lesson_params):
        assert torch.equal(a, b)
    x = torch.randn(5, 2)
    assert torch.equal(mlp(x), lesson(x))


def test_mlp_shape_and_layers():
    net = MLP(2, 8, 3, 4)
    assert [(lin.in_features, lin.out_features) for lin in net.linears] == [(2, 8), (8, 8), (8, 8), (8, 4)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.layers) == 3
    assert not any(isinstance(m, torch.nn.Softmax) for m in net.modules())
    out = net(torch.randn(7, 2))
    assert out.shape == (7, 4)


@pytest.mark.parametrize("args", [(2, 0, 1, 3), (2, 4, -1, 3), (0, 4, 1, 3), (2, 4, 1.5, 3)])
def test_mlp_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="allowed: integers >= 1"):
        MLP(*args)
