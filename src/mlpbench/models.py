"""The lesson's network and its homework generalisation."""

from __future__ import annotations

import torch
from torch import nn


class LessonNet(nn.Module):
    """The lesson's ``MyNeuralNet``, verbatim: the reference the pipeline is tested against."""

    def __init__(self):
        super().__init__()
        self.input_to_hidden_layer = nn.Linear(2, 4)
        self.hidden_layer_activation = nn.ReLU()
        self.hidden_to_output_layer = nn.Linear(4, 3)

    def forward(self, x):
        x = self.input_to_hidden_layer(x)
        x = self.hidden_layer_activation(x)
        x = self.hidden_to_output_layer(x)
        return x


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with ReLU between, then a linear output layer.

    No softmax: ``CrossEntropyLoss`` applies it. Layers are created first to last with the
    default ``nn.Linear`` initialisation, so after the same ``torch.manual_seed`` ``MLP(2, 4, 1, 3)``
    draws exactly the weights of :class:`LessonNet`.
    """

    def __init__(self, n_in: int, width: int, depth: int, n_out: int):
        super().__init__()
        for name, value in (("n_in", n_in), ("width", width), ("depth", depth), ("n_out", n_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP {name}: got {value!r}; allowed: integers >= 1")
        self.n_in, self.width, self.depth, self.n_out = n_in, width, depth, n_out
        sizes = [n_in] + [width] * depth + [n_out]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i > 0:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(fan_in, fan_out))
        self.layers = nn.Sequential(*layers)

    @property
    def linears(self) -> list[nn.Linear]:
        """The Linear layers, input first (layer 0) to output last (layer ``depth``)."""
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
