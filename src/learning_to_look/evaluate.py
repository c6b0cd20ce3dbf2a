"""Where the model looks, measured against ground truth the data set was built with.

Accuracy alone cannot tell a model that reads the digit from one that reads a
shortcut and happens to be right; these metrics can: the share of the positive
CAM (or Grad-CAM) and of the input-gradient mass on the digit (oracle mask,
dilated 3x3) and, on DecoyMNIST, on the decoy square; and the KL of the
normalised map to the oracle outline target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .attribution import attention, input_gradients, minmax_normalize
from .data.builders import DIGIT_THRESHOLD
from .data.pipeline import as_rgb, to_input
from .data.store import Split
from .losses import kl_per_image, outline_target
from .maps.diagnostics import mass_share
from .models import Backbone

#: Classes shown in the qualitative figure: the first test image of each of 0..N-1.
N_EXAMPLES = 6


def digit_masks(digits: np.ndarray, dilate: int = 3) -> torch.Tensor:
    """The clean digit's pixels, dilated with a ``dilate`` square: (N, 28, 28) float."""
    m = torch.as_tensor(digits > DIGIT_THRESHOLD, dtype=torch.float32)[:, None]  # (N,1,28,28)
    return F.max_pool2d(m, dilate, stride=1, padding=dilate // 2)[:, 0]


def group_accuracy(correct: torch.Tensor, groups: torch.Tensor) -> dict[str, Any]:
    """Accuracy per group, its minimum and its unweighted mean over the groups present
    (Sagawa et al. 2020): a model that reads a spurious feature fails its minority groups,
    which the overall accuracy of a majority-heavy split hides. ``correct`` (N,) bool,
    ``groups`` (N,) int; accuracies in percent, keys of ``group_accuracy`` the group ids."""
    present = torch.unique(groups)  # (G,)
    per = {int(g): float(correct[groups == g].float().mean()) * 100 for g in present}
    return {"worst_group_accuracy": min(per.values()), "mean_group_accuracy": sum(per.values()) / len(per),
            "group_accuracy": {str(g): a for g, a in per.items()}}


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
    oracle = torch.as_tensor(split.digits > DIGIT_THRESHOLD, dtype=torch.float32)
    keys = ("correct", "cam_digit", "grad_digit", "cam_decoy", "grad_decoy", "kl")
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for i in range(0, len(y_all), batch_size):
        sl = slice(i, i + batch_size)
        x = as_rgb(x_all[sl]).to(device).requires_grad_(True)
        y = y_all[sl].to(device)
        logits, att = attention(model, x, y, create_graph=False)  # (B,K), (B,h,w)
        grads = input_gradients(logits, x, create_graph=False, target="true-logit", labels=y)  # (B,3,H,W)
        att28 = _to_28(att.detach()).clamp_min(0).cpu()  # (B,28,28)
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
    if split.groups is not None:
        out |= group_accuracy(torch.cat(sums["correct"]), torch.as_tensor(split.groups))
    if decoy is not None:
        out["cam_on_decoy"] = float(torch.nanmean(torch.cat(sums["cam_decoy"])))
        out["grad_on_decoy"] = float(torch.nanmean(torch.cat(sums["grad_decoy"])))
    return out


def _to_28(maps: torch.Tensor) -> torch.Tensor:
    """(B,h,w) feature-resolution maps -> (B,28,28) at the image's resolution."""
    return F.interpolate(maps[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]


def example_indices(labels: np.ndarray, n: int = N_EXAMPLES) -> np.ndarray:
    """The first image of each class 0..n-1: fixed in advance, never picked by outcome."""
    return np.array([np.flatnonzero(labels == c)[0] for c in range(n) if (labels == c).any()], dtype=np.int64)


def examples(model: Backbone, split: Split, input_transform: str = "none",
             device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """What the qualitative figure shows of a selected model on ``split``: the fixed
    example images, their labels, the model's predictions and its CAM (Grad-CAM where
    there is no GAP head) of the true class, min-max normalised, at 28x28."""
    model.eval()
    idx = example_indices(split.labels)
    x = as_rgb(to_input(split.images[idx], model.input_size, input_transform)).to(device)  # (n,3,S,S)
    logits, att = attention(model, x, torch.as_tensor(split.labels[idx]).to(device), create_graph=False)
    cams = _to_28(minmax_normalize(att.detach())).clamp(0, 1).cpu()  # (n,28,28)
    return {"index": idx, "images": split.images[idx], "labels": split.labels[idx],
            "predictions": logits.argmax(1).cpu().numpy(), "cams": cams.numpy()}
