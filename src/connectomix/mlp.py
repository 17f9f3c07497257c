"""Small multilayer perceptrons for learned scores (the agglomeration's edge classifier,
:mod:`connectomix.segment.edges`; the synapse partner classifier, :mod:`connectomix.synapses.partner_model`):
standardised inputs, ReLU hidden layers, one sigmoid output. Inference is numpy (weights come from JSON, so no code
runs when a model is read); training is full-batch Adam on binary cross-entropy with torch, deterministic for a
seed and dtype."""

from __future__ import annotations

import numpy as np


class MLP:
    """Weights ``layers`` [(W (n_in, n_out), b (n_out,)), ...] over inputs standardised by ``mean`` and ``scale``."""

    def __init__(self, mean, scale, layers):
        self.mean = np.asarray(mean, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self.layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in layers]

    def check(self, n_features: int, where: str) -> None:
        """A clear error naming ``where`` unless the shapes chain from ``n_features`` inputs to one output."""
        widths = [n_features] + [len(b) for _, b in self.layers]
        for (w, b), n_in, n_out in zip(self.layers, widths[:-1], widths[1:]):
            if w.shape != (n_in, n_out) or b.shape != (n_out,):
                raise ValueError(f"{where}: a layer has weights {w.shape} and bias {b.shape}, "
                                 f"expected ({n_in}, {n_out}) and ({n_out},)")
        if widths[-1] != 1 or self.mean.shape != (n_features,) or self.scale.shape != (n_features,):
            raise ValueError(f"{where}: expected one output and {n_features} normalisation values")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P (0..1) per row of ``x`` (float64)."""
        h = (np.asarray(x, np.float64) - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative h: P = 0
            return 1.0 / (1.0 + np.exp(-h[:, 0]))

    def layer_lists(self) -> list[tuple[list, list]]:
        """The weights as nested lists (W, b) per layer, for JSON."""
        return [(w.tolist(), b.tolist()) for w, b in self.layers]


def fit(x: np.ndarray, y: np.ndarray, hidden=(32, 32), steps: int = 800, lr: float = 0.01,
        weight_decay: float = 0.0, seed: int = 0, dtype: str = "float64") -> tuple[MLP, float]:
    """Train an :class:`MLP` on rows ``x`` and labels ``y`` (0/1); returns it and the final training loss."""
    import torch

    x = np.asarray(x, np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    widths = [x.shape[1], *hidden, 1]
    linears = [torch.nn.Linear(a, b, dtype=torch_dtype) for a, b in zip(widths[:-1], widths[1:])]
    net = torch.nn.Sequential(*[m for lin in linears for m in (lin, torch.nn.ReLU())][:-1])
    xt = torch.tensor((x - mean) / scale, dtype=torch_dtype)
    yt = torch.tensor(np.asarray(y, np.float64), dtype=torch_dtype)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss = None
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt)[:, 0], yt)
        loss.backward()
        opt.step()
    layers = [(lin.weight.detach().numpy().T.astype(np.float64), lin.bias.detach().numpy().astype(np.float64))
              for lin in linears]
    return MLP(mean, scale, layers), float(loss.detach()) if loss is not None else float("nan")
