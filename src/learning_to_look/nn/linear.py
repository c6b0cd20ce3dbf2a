"""Linear heads fitted on fixed features: the math of last-layer retraining (DFR, AFR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def standardise(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean (D,), std (D,)) of ``x`` (N, D), a zero std counted as 1 (scikit-learn's StandardScaler)."""
    std = x.std(0, unbiased=False)
    return x.mean(0), torch.where(std > 0, std, torch.ones_like(std))


def l1_logistic(x: Tensor, s: Tensor, c: float, iters: int = 5000, tol: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Binary logistic regression with an L1 penalty, as liblinear fits it (scikit-learn's
    LogisticRegression(penalty="l1", solver="liblinear")): minimise
    ||w||_1 + |b| + c * sum_i log(1 + exp(-s_i (w . x_i + b))) with s_i in {-1, +1}; the
    intercept is a constant feature and penalised like any weight, as in liblinear.
    Solved by FISTA (accelerated proximal gradient) in float64. Returns (w (D,), b ())."""
    xb = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (N, D+1)
    s = s.double()
    step = 1.0 / (c * 0.25 * torch.linalg.matrix_norm(xb, 2) ** 2 + 1e-12)
    w = z = torch.zeros(xb.shape[1], dtype=torch.float64)
    t = 1.0
    for _ in range(iters):
        grad = -c * xb.T @ (s * torch.sigmoid(-s * (xb @ z)))  # (D+1,)
        u = z - step * grad
        w_next = torch.sign(u) * (u.abs() - step).clamp_min(0)  # soft threshold: the L1 proximal step
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = w_next + (t - 1) / t_next * (w_next - w)
        done = float((w_next - w).abs().max()) <= tol * max(1.0, float(w_next.abs().max()))
        w, t = w_next, t_next
        if done:
            break
    return w[:-1], w[-1]


def l1_logistic_classes(x: Tensor, y: Tensor, k: int, c: float) -> tuple[Tensor, Tensor]:
    """A head (k, D), (k,) whose argmax is liblinear's prediction: for two classes one
    problem (class 1 against class 0) written as logits (0, w . x + b); for more, one
    against the rest per class, as liblinear does."""
    if k == 2:
        w, b = l1_logistic(x, (y == 1).double() * 2 - 1, c)
        return torch.stack([torch.zeros_like(w), w]), torch.stack([torch.zeros_like(b), b])
    fits = [l1_logistic(x, (y == j).double() * 2 - 1, c) for j in range(k)]
    return torch.stack([w for w, _ in fits]), torch.stack([b for _, b in fits])


def fold_scaling(w: Tensor, b: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """The head on raw features equal to (w, b) on standardised ones: w / std, b - (w / std) . mean."""
    w_raw = w / std  # (k, D)
    return w_raw, b - w_raw @ mean


def afr_weights(logits: Tensor, y: Tensor, gamma: float) -> Tensor:
    """AFR's weights (losses.get_exp_weights, supervised_utils.rebalance_weights and
    normalize_weights of its code): exp(-gamma * p_true) per row, multiplied by N / (rows
    of its class), normalised to sum 1. (N,)"""
    p_true = logits.softmax(-1).gather(1, y.view(-1, 1))[:, 0]  # (N,)
    w = torch.exp(-gamma * p_true)
    counts = torch.bincount(y, minlength=logits.shape[1]).to(w.dtype)  # (K,)
    w = w * len(y) / counts[y]
    return w / w.sum()


def afr_loss(logits: Tensor, y: Tensor, w: Tensor, weight: Tensor, bias: Tensor, w0: Tensor, b0: Tensor,
             lam: float) -> Tensor:
    """AFR's objective (fixed_cwxe plus take_step's regulariser): sum_i w_i CE_i +
    lam * (||W - W0||^2 + ||b - b0||^2)."""
    ce = F.cross_entropy(logits, y, reduction="none")  # (N,)
    return (w * ce).sum() + lam * ((weight - w0).pow(2).sum() + (bias - b0).pow(2).sum())
