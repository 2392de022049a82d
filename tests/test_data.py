import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.model_selection import train_test_split

from mlpbench import data


def test_toy_is_the_lessons_data():
    ds = data.toy()
    assert ds.name == "toy" and ds.n_classes == 3 and ds.n_features == 2
    assert ds.x_train.tolist() == [[-2, -1], [-1, -1], [-1, -2], [2, -1], [1, -1], [1, -2], [2, 1], [1, 1], [1, 2]]
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.x_test.tolist() == [[-2, -2], [2, -2], [2, 2]]
    assert ds.y_test.tolist() == [0, 1, 2]
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64


def test_toy_one_hot_targets_are_the_lessons_y_train():
    lesson_y = [[1, 0, 0]] * 3 + [[0, 1, 0]] * 3 + [[0, 0, 1]] * 3
    y = data.one_hot(data.toy().y_train, 3)
    assert y.dtype == torch.float32
    assert torch.equal(y, torch.tensor(lesson_y).float())


def test_blobs_is_the_homework_split():
    ds = data.blobs()
    x, y = make_blobs(n_samples=400, centers=4, cluster_std=2, random_state=10)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=2)
    assert ds.n_classes == 4 and ds.x_train.shape == (240, 2) and ds.x_test.shape == (160, 2)
    assert torch.equal(ds.x_train, torch.tensor(x_train).float())
    assert torch.equal(ds.x_test, torch.tensor(x_test).float())
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert set(ds.y_train.tolist()) == {0, 1, 2, 3}


def test_blobs_is_deterministic_and_configurable():
    a, b = data.blobs(), data.blobs()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    small = data.load("blobs", {"data": {"n_samples": 100, "centers": 3, "test_size": 0.5}})
    assert small.x_train.shape == (50, 2) and small.x_test.shape == (50, 2) and small.n_classes == 3
    other = data.load("blobs", {"data": {"random_state": 11}})
    assert not torch.equal(other.x_train, a.x_train)


def test_accuracy_single_and_batched():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert data.accuracy(logits, labels).item() == pytest.approx(2 / 3)
    batched = torch.stack([logits, torch.eye(3)])  # second member: argmax 0, 1, 2
    assert data.accuracy(batched, labels).tolist() == pytest.approx([2 / 3, 2 / 3])


def test_load_rejects_unknown_dataset_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^dataset: got 'mnist'; allowed: toy, blobs$"):
        data.load("mnist", {})
