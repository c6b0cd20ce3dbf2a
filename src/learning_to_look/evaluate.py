"""Where the model looks, measured against ground truth the data set was built with.

Accuracy alone cannot tell a model that reads the digit from one that reads a
shortcut and happens to be right; these metrics can: the share of the positive
CAM (or Grad-CAM) and of the input-gradient mass on the digit (oracle mask,
dilated 3x3) and, on DecoyMNIST, on the decoy square; and the KL of the
normalised map to the oracle outline target.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .attribution import cam, grad_cam, input_gradients, minmax_normalize
from .data.pipeline import as_rgb, to_input
from .data.store import Split
from .losses import forward_kl, outline_target
from .models import Backbone

ORACLE_THRESHOLD = 10


def digit_masks(digits: np.ndarray, dilate: int = 3) -> torch.Tensor:
    """The clean digit's pixels (> 10 of 255), dilated with a ``dilate`` square: (N, 28, 28) float."""
    m = torch.as_tensor(digits > ORACLE_THRESHOLD, dtype=torch.float32)[:, None]
    return F.max_pool2d(m, dilate, stride=1, padding=dilate // 2)[:, 0]


def mass_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-image share of non-negative map mass inside ``region``; NaN where the map is empty."""
    total = maps.flatten(1).sum(1)
    inside = (maps * region).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def kl_per_image(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`~learning_to_look.losses.forward_kl` per image, NaN where the target is
    empty, so those images are left out of the mean instead of counting as 0."""
    kl = forward_kl(s, q, reduction="none")
    return torch.where(q.flatten(1).sum(1) > 0, kl, torch.full_like(kl, float("nan")))


def raw_attention(model: Backbone, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, non-negative class map of the true class): CAM for GAP networks, Grad-CAM otherwise."""
    with torch.enable_grad():
        logits, feats = model(x)
        if model.has_gap_classifier:
            return logits, cam(feats, model.classifier_weight, y)
        return logits, grad_cam(feats, logits, y, create_graph=False)


def evaluate_split(model: Backbone, split: Split, input_transform: str = "none", batch_size: int = 1000,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and attention metrics of ``model`` on ``split`` (one pass)."""
    model.eval()
    size = model.input_size
    x_all = to_input(split.images, size, input_transform)
    y_all = torch.as_tensor(split.labels)
    digit = digit_masks(split.digits)
    decoy = split.decoy_masks()
    decoy = None if decoy is None else torch.as_tensor(decoy, dtype=torch.float32)
    oracle = torch.as_tensor(split.digits > ORACLE_THRESHOLD, dtype=torch.float32)
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in ("correct", "cam_digit", "grad_digit", "cam_decoy", "grad_decoy", "kl")}
    for i in range(0, len(y_all), batch_size):
        sl = slice(i, i + batch_size)
        x = as_rgb(x_all[sl]).to(device).requires_grad_(True)
        y = y_all[sl].to(device)
        logits, att = raw_attention(model, x, y)
        grads = input_gradients(logits, x, create_graph=False, target="true-logit", labels=y)
        att28 = F.interpolate(att.detach()[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0].clamp_min(0).cpu()
        grad28 = F.interpolate(grads.detach().abs().sum(1, keepdim=True), size=(28, 28), mode="area")[:, 0].cpu()
        q = outline_target(oracle[sl], threshold=0.5, upsample=size, size=att.shape[-1])
        sums["correct"].append((logits.argmax(1) == y).cpu())
        sums["cam_digit"].append(mass_share(att28, digit[sl]))
        sums["grad_digit"].append(mass_share(grad28, digit[sl]))
        sums["kl"].append(kl_per_image(minmax_normalize(att.detach().cpu()), q))
        if decoy is not None:
            sums["cam_decoy"].append(mass_share(att28, decoy[sl]))
            sums["grad_decoy"].append(mass_share(grad28, decoy[sl]))
    out = {
        "accuracy": float(torch.cat(sums["correct"]).float().mean()) * 100,
        "cam_on_digit": float(torch.nanmean(torch.cat(sums["cam_digit"]))),
        "grad_on_digit": float(torch.nanmean(torch.cat(sums["grad_digit"]))),
        "kl_to_oracle": float(torch.nanmean(torch.cat(sums["kl"]))),
        "n": int(len(y_all)),
    }
    if decoy is not None:
        out["cam_on_decoy"] = float(torch.nanmean(torch.cat(sums["cam_decoy"])))
        out["grad_on_decoy"] = float(torch.nanmean(torch.cat(sums["grad_decoy"])))
    return out
