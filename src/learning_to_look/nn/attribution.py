"""Differentiable attributions: maps that stay in the autograd graph.

They are used inside training losses, so a loss on a map must backpropagate to the
model's weights. This is why Grad-CAM and input gradients are written here with
``create_graph=True`` rather than taken from captum or pytorch-grad-cam, which detach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import L2LError

INPUT_GRADIENT_TARGETS = ("sum-log-prob", "true-logit")
#: "auto": CAM where the backbone ends in GAP + linear, Grad-CAM otherwise.
ATTENTION_KINDS = ("auto", "cam", "grad-cam")


def cam(features: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """Raw class-activation map (B,h,w) of each sample's label (PROTOCOL 3.2), before
    min-max normalisation."""
    return F.relu(torch.einsum("bc,bchw->bhw", weight[labels], features))


def minmax_normalize(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Rescale each sample (dim 0) to [0, 1] over all its other dims; ``eps`` keeps a
    constant map finite (it becomes all zeros)."""
    dims = tuple(range(1, maps.ndim))
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    return (maps - low) / (high - low + eps)


def _require_graph(tensor: Tensor, what: str) -> None:
    if not tensor.requires_grad:
        raise ValueError(f"{what} is not in the autograd graph; do not compute it under torch.no_grad()")


def grad_cam(features: Tensor, logits: Tensor, labels: Tensor, create_graph: bool = True) -> Tensor:
    """Grad-CAM (B,h,w) of each sample's label.

    One backward pass for the whole batch is exact because samples do not interact
    (no batch norm in training mode). With ``create_graph=True`` the channel weights
    are themselves differentiable, so a loss on the map reaches every layer; with
    False they are constants (enough for evaluation). The graph of ``logits`` is kept,
    so the caller can still backpropagate its own loss through it.
    """
    _require_graph(features, "features")
    selected = logits.gather(1, labels.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(selected, features, create_graph=create_graph, retain_graph=True)
    alpha = grads.mean(dim=(2, 3))
    return F.relu(torch.einsum("bc,bchw->bhw", alpha, features))


def input_gradients(
    logits: Tensor,
    inputs: Tensor,
    create_graph: bool = True,
    target: str = "sum-log-prob",
    labels: Tensor | None = None,
) -> Tensor:
    """Gradient of a scalar of the logits with respect to the inputs (same shape).

    ``"sum-log-prob"``: the sum over batch and classes of log-softmax, the "right
    reasons" gradient RRR penalises (Ross et al. 2017); it needs no labels.
    ``"true-logit"``: the logit of each sample's label, a saliency map for evaluation.
    """
    if target not in INPUT_GRADIENT_TARGETS:
        raise L2LError(f"unknown input-gradient target {target!r}; choose one of: {', '.join(INPUT_GRADIENT_TARGETS)}")
    _require_graph(inputs, "inputs")
    if target == "sum-log-prob":
        scalar = F.log_softmax(logits, dim=1).sum()
    else:
        if labels is None:
            raise ValueError("target='true-logit' needs labels")
        scalar = logits.gather(1, labels.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(scalar, inputs, create_graph=create_graph, retain_graph=True)
    return grads


def attention(model, x: Tensor, y: Tensor, create_graph: bool = True, kind: str = "auto") -> tuple[Tensor, Tensor]:
    """(logits (B,K), raw non-negative map (B,h,w) of each sample's label) from one forward pass.

    The one place that decides between CAM and Grad-CAM, for training losses and
    evaluation alike. CAM is exact only for a GAP + linear head, so asking for it on
    another backbone is an error. Grad-CAM needs gradients even under
    ``torch.no_grad()`` (validation), so it enables them itself.
    """
    if kind not in ATTENTION_KINDS:
        raise L2LError(f"unknown attention kind {kind!r}; choose one of: {', '.join(ATTENTION_KINDS)}")
    use_cam = kind == "cam" or (kind == "auto" and model.has_gap_classifier)
    if use_cam and not model.has_gap_classifier:
        raise L2LError(f"CAM needs a global-average-pooling backbone and {model.name} has none; "
                       "use Grad-CAM (--method gradcam-kl) or --backbone lenet-gap")
    if use_cam:
        logits, feats = model(x)  # (B,K), (B,C,h,w)
        return logits, cam(feats, model.classifier_weight, y)  # (B,h,w)
    with torch.enable_grad():
        logits, feats = model(x)
        return logits, grad_cam(feats, logits, y, create_graph=create_graph)  # (B,h,w)


def expected_gradients(model: torch.nn.Module, x: Tensor, y: Tensor, references: Tensor, alpha: Tensor,
                       create_graph: bool = True) -> Tensor:
    """One-sample Expected Gradients (Erion et al. 2021), (B,C,H,W): for each image, one
    reference ``x'`` and one ``alpha`` in [0, 1], ``(x - x') * d logit_y / d input`` at
    ``x' + alpha (x - x')``. Averaged over references and alphas it is the expectation
    of integrated gradients over a background distribution; a training prior draws one
    of each per image per step, as the paper does. ``alpha`` is (B,)."""
    a = alpha.view(-1, 1, 1, 1)  # (B,1,1,1)
    point = (references + a * (x - references)).detach().requires_grad_(True)  # (B,C,H,W)
    logits = model(point)
    logits = logits[0] if isinstance(logits, tuple) else logits  # backbones return (logits, features)
    (grads,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), point, create_graph=create_graph)
    return (x - references) * grads
