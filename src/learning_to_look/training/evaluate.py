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


def group_shares(groups: torch.Tensor) -> dict[int, float]:
    """Each group's share of ``groups`` (N,) int: the training split's, which weigh the
    group accuracies in group_DRO's, JTT's and DFR's average."""
    ids, counts = torch.unique(groups, return_counts=True)  # (G,), (G,)
    return {int(g): float(c) / len(groups) for g, c in zip(ids, counts)}


def group_accuracy(correct: torch.Tensor, groups: torch.Tensor,
                   shares: dict[int, float] | None = None) -> dict[str, Any]:
    """Accuracy per group and three summaries, each by its convention (Sagawa et al.
    2020): a model that reads a spurious feature fails its minority groups, which the
    overall accuracy of a majority-heavy split hides.
    - ``worst_group_accuracy``: the lowest group accuracy;
    - ``mean_group_accuracy``: their plain mean over the groups present (GALS's);
    - ``weighted_group_accuracy``: weighted by each group's share of the training split
      (``shares``; group_DRO's, JTT's, DFR's "average accuracy"), absent without shares.
    ``correct`` (N,) bool, ``groups`` (N,) int; accuracies in percent."""
    present = torch.unique(groups)  # (G,)
    per = {int(g): float(correct[groups == g].float().mean()) * 100 for g in present}
    out = {"worst_group_accuracy": min(per.values()), "mean_group_accuracy": sum(per.values()) / len(per)}
    if shares:
        total = sum(shares.get(g, 0.0) for g in per)
        out["weighted_group_accuracy"] = sum(a * shares.get(g, 0.0) for g, a in per.items()) / total
    return out | {"group_accuracy": {str(g): a for g, a in per.items()}}


def confusion_matrix(y: torch.Tensor, predicted: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) counts, rows the true class and columns the predicted one."""
    return torch.bincount(y * k + predicted, minlength=k * k).view(k, k)


def balanced_accuracy(correct: torch.Tensor, y: torch.Tensor) -> float:
    """The mean over the classes present of each class's accuracy, in percent (GALS selects on it)."""
    return float(torch.stack([correct[y == c].float().mean() for c in torch.unique(y)]).mean()) * 100


def class_metrics(y: torch.Tensor, predicted: torch.Tensor, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Balanced accuracy, per-class accuracy (by class name, classes present) and the confusion matrix."""
    m = confusion_matrix(y, predicted, len(classes))  # (K,K)
    per = {classes[c]: 100.0 * float(m[c, c]) / float(m[c].sum()) for c in range(len(classes)) if m[c].sum()}
    return {"balanced_accuracy": balanced_accuracy(y == predicted, y), "class_accuracy": per,
            "confusion": m.tolist()}


def evaluate_split(model: Backbone, split: Split, input_transform: str = "none", batch_size: int | None = None,
                   device: torch.device | str = "cpu", progress: bool = False,
                   shares: dict[int, float] | None = None, classes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Accuracy, balanced and per-class accuracy, the confusion matrix, group accuracy
    (weighted by the training groups' ``shares``) and, where the split knows its objects
    and decoys, the attention metrics of ``model`` on ``split`` (one pass, converting
    the uint8 images batch by batch). Where only some images have an object mask, the
    object metrics are measured on those alone, and ``masked_images`` says how many."""
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
                sums.setdefault("predicted", []).append(model(x)[0].argmax(1).cpu())
            continue
        x.requires_grad_(True)
        logits, att = attention(model, x, y, create_graph=False)  # (B,K), (B,h,w)
        sums.setdefault("predicted", []).append(logits.argmax(1).cpu())
        grads = input_gradients(logits, x, create_graph=False, target="true-logit", labels=y)  # (B,3,S,S)
        att_img = to_image(att.detach(), hw).clamp_min(0).cpu()  # (B,H,W)
        grad_img = F.interpolate(grads.detach().abs().sum(1, keepdim=True), size=hw, mode="area")[:, 0].cpu()
        for name, mask in regions.items():
            sums.setdefault(f"cam_on_{name}", []).append(mass_share(att_img, mask[sl]))
            sums.setdefault(f"grad_on_{name}", []).append(mass_share(grad_img, mask[sl]))
        if oracle is not None:
            q = outline_target(oracle[sl], threshold=0.5, upsample=size, size=att.shape[-1])  # (B,h,w)
            sums.setdefault("kl_to_oracle", []).append(kl_per_image(minmax_normalize(att.detach().cpu()), q))
    predicted = torch.cat(sums.pop("predicted"))  # (N,)
    correct = predicted == y_all  # (N,)
    names = classes or tuple(str(c) for c in range(model.num_classes))
    out: dict[str, Any] = {"accuracy": float(correct.float().mean()) * 100, "n": int(len(y_all))}
    out |= class_metrics(y_all.long(), predicted, names)
    unmasked = {k for k in sums if "digit" in k or k == "kl_to_oracle"}  # measured against the object mask
    for k, v in sums.items():
        values = torch.cat(v)  # (N,)
        if known is not None and k in unmasked:
            values = torch.where(known, values, torch.full_like(values, float("nan")))
        out[k] = float(torch.nanmean(values))
    if known is not None:
        out["masked_images"] = int(known.sum()) if split.digits is not None else 0
    if split.groups is not None:
        out |= group_accuracy(correct, torch.as_tensor(split.groups), shares)
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
