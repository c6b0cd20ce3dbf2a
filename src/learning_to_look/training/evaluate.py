"""Where the model looks, measured against ground truth the data set was built with.

Accuracy alone cannot tell a model that reads the digit from one that reads a
shortcut and happens to be right; these metrics can: the share of the positive
CAM (or Grad-CAM) and of the input-gradient mass on the digit (oracle mask,
dilated 3x3) and, on DecoyMNIST, on the decoy square; and the KL of the
normalised map to the oracle outline target.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import bar
from ..nn.attribution import attention, input_gradients, minmax_normalize
from ..data.builders import DIGIT_THRESHOLD
from ..data.pipeline import as_rgb, eval_batch_size, to_input
from ..data.store import Split
from ..nn.losses import kl_per_image, outline_target
from ..maps.diagnostics import mass_share
from ..nn.backbones import Backbone

#: Classes shown in the qualitative figure: the first test image of each of 0..N-1.
N_EXAMPLES = 6


def digit_masks(digits: np.ndarray, dilate: int = 3) -> torch.Tensor:
    """The clean digit's (the object's) pixels, dilated with a ``dilate`` square: (N, H, W) float."""
    m = torch.as_tensor(digits > DIGIT_THRESHOLD, dtype=torch.float32)[:, None]  # (N,1,H,W)
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


def evaluate_split(model: Backbone, split: Split, input_transform: str = "none", batch_size: int | None = None,
                   device: torch.device | str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Accuracy, group accuracy and, where the split knows its objects and decoys, the
    attention metrics of ``model`` on ``split`` (one pass, converting the uint8 images
    batch by batch). Where only some images have an object mask, the object metrics are
    measured on those alone, and ``masked_images`` says how many."""
    model.eval()
    size, hw = model.input_size, tuple(split.images.shape[-2:])
    batch_size = batch_size or eval_batch_size(size)
    y_all = torch.as_tensor(split.labels)
    known = None if split.masked is None else torch.as_tensor(split.masked)  # (N,) bool
    if known is not None and not bool(known.any()):
        split = dataclasses.replace(split, digits=None)  # no image of this split has a mask: accuracy only
    regions = {} if split.digits is None else {"digit": digit_masks(split.digits)}  # name -> (N,H,W)
    decoy = split.decoy_masks()  # (N,H,W) bool or None
    if decoy is not None:
        regions["decoy"] = torch.as_tensor(decoy, dtype=torch.float32)
    oracle = None if split.digits is None else torch.as_tensor(split.digits > DIGIT_THRESHOLD, dtype=torch.float32)
    sums: dict[str, list[torch.Tensor]] = {}
    for i in bar(range(0, len(y_all), batch_size), show=progress, desc=f"evaluating {split.name}", unit="batch",
                 leave=False):
        sl = slice(i, i + batch_size)
        x = as_rgb(to_input(split.images[sl], size, input_transform)).to(device)  # (B,3,S,S)
        y = y_all[sl].to(device)
        if not regions:  # nothing to measure attention on (an import without masks): accuracy only
            with torch.no_grad():
                sums.setdefault("correct", []).append((model(x)[0].argmax(1) == y).cpu())
            continue
        x.requires_grad_(True)
        logits, att = attention(model, x, y, create_graph=False)  # (B,K), (B,h,w)
        sums.setdefault("correct", []).append((logits.argmax(1) == y).cpu())
        grads = input_gradients(logits, x, create_graph=False, target="true-logit", labels=y)  # (B,3,S,S)
        att_img = to_image(att.detach(), hw).clamp_min(0).cpu()  # (B,H,W)
        grad_img = F.interpolate(grads.detach().abs().sum(1, keepdim=True), size=hw, mode="area")[:, 0].cpu()
        for name, mask in regions.items():
            sums.setdefault(f"cam_on_{name}", []).append(mass_share(att_img, mask[sl]))
            sums.setdefault(f"grad_on_{name}", []).append(mass_share(grad_img, mask[sl]))
        if oracle is not None:
            q = outline_target(oracle[sl], threshold=0.5, upsample=size, size=att.shape[-1])  # (B,h,w)
            sums.setdefault("kl_to_oracle", []).append(kl_per_image(minmax_normalize(att.detach().cpu()), q))
    correct = torch.cat(sums.pop("correct"))  # (N,)
    out: dict[str, Any] = {"accuracy": float(correct.float().mean()) * 100, "n": int(len(y_all))}
    unmasked = {k for k in sums if "digit" in k or k == "kl_to_oracle"}  # measured against the object mask
    for k, v in sums.items():
        values = torch.cat(v)  # (N,)
        if known is not None and k in unmasked:
            values = torch.where(known, values, torch.full_like(values, float("nan")))
        out[k] = float(torch.nanmean(values))
    if known is not None:
        out["masked_images"] = int(known.sum()) if split.digits is not None else 0
    if split.groups is not None:
        out |= group_accuracy(correct, torch.as_tensor(split.groups))
    return out


def to_image(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B,h,w) feature-resolution maps -> (B,H,W) at the image's resolution."""
    return F.interpolate(maps[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]


def example_indices(labels: np.ndarray, n: int = N_EXAMPLES) -> np.ndarray:
    """The first image of each class 0..n-1: fixed in advance, never picked by outcome."""
    return np.array([np.flatnonzero(labels == c)[0] for c in range(n) if (labels == c).any()], dtype=np.int64)


def examples(model: Backbone, split: Split, input_transform: str = "none",
             device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """What the qualitative figure shows of a selected model on ``split``: the fixed
    example images, their labels, the model's predictions and its CAM (Grad-CAM where
    there is no GAP head) of the true class, min-max normalised, at the image's size."""
    model.eval()
    idx = example_indices(split.labels)
    x = as_rgb(to_input(split.images[idx], model.input_size, input_transform)).to(device)  # (n,3,S,S)
    logits, att = attention(model, x, torch.as_tensor(split.labels[idx]).to(device), create_graph=False)
    cams = to_image(minmax_normalize(att.detach()), tuple(split.images.shape[-2:])).clamp(0, 1).cpu()  # (n,H,W)
    return {"index": idx, "images": split.images[idx], "labels": split.labels[idx],
            "predictions": logits.argmax(1).cpu().numpy(), "cams": cams.numpy()}
