"""The Energy loss of model guidance (Rao et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import L2LError
from ..nn.attribution import attention, input_gradients
from ..nn.backbones import Backbone
from ..nn.guidance import energy_loss
from .base import Batch, Method, register_method


@register_method
class Energy(Method):
    """Rao et al.'s Energy loss (their ``losses.py``, ``EnergyPointingGameBBMultipleLoss``):
    per image, 1 - the share of the positive attribution of the true class that falls in
    the map, summed over the images with a map. The attribution (``--attribution``) is
    Grad-CAM of the last feature map or CAM, upsampled bilinearly to the input, or input x
    gradient summed over channels, as their ``attribution_methods.py`` computes them; the
    map weighs each pixel (their boxes are binary masks)."""

    name = "energy"
    paper = "Rao, Böhle, Parchami-Araghi, Schiele, ICCV 2023"
    summary = ("CE + λ · Σ_images (1 − positive attribution inside the map / all positive attribution), on CAM, "
               "Grad-CAM or input × gradient")
    uses_maps = True
    stackable = False
    default_lambda = 0.05  # Ross et al.'s rule of thumb, see docs/methods.md
    options = {"attribution": "grad-cam"}  # runs on every backbone, as their GradCam attributor does
    epoch_cost = 1.0  # CAM or Grad-CAM, measured (scripts/epoch_cost.py): the second backward stops at the features
    IXG_COST = 2.3  # input x gradient, measured likewise: double backpropagation to the input

    @property
    def reads_pixels(self) -> bool:  # type: ignore[override]
        """Input x gradient reaches the pixels (no cached features); CAM and Grad-CAM stop at the features."""
        return self.cfg.attribution == "input-x-gradient"

    def relative_cost(self) -> float:
        return self.IXG_COST if self.cfg.attribution == "input-x-gradient" else self.epoch_cost

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        if self.cfg.attribution == "cam" and not model.has_gap_classifier:
            raise L2LError(f"--attribution cam needs a global-average-pooling backbone and {model.name} has none; "
                           "use --attribution grad-cam or input-x-gradient")

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Any]:
        """The map at input resolution (N,S,S), which images have one (N,), and the target
        for the validation alignment diagnostic only."""
        side = (backbone.input_size,) * 2
        mask = F.interpolate(maps[:, None].float(), size=side, mode="bilinear", align_corners=False)[:, 0]
        return {"target": self.target(maps, backbone), "mask": mask.clamp(0, 1), "valid": maps.flatten(1).amax(1) > 0}

    def attribution(self, model: Backbone, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B,K), the true class's attribution (B,S,S) at input resolution), in the graph."""
        if self.cfg.attribution == "input-x-gradient":
            logits, _ = model(x)
            grads = input_gradients(logits, x, target="true-logit", labels=y)  # (B,3,S,S)
            return logits, (grads * x).sum(1)
        logits, raw = attention(model, x, y, kind=self.cfg.attribution)  # (B,h,w)
        return logits, F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch.x.detach().requires_grad_(self.cfg.attribution == "input-x-gradient")  # (B,3,S,S)
        logits, attr = self.attribution(model, x, batch.y)
        ce = F.cross_entropy(logits, batch.y)
        energy = energy_loss(attr, batch.aux["mask"], batch.aux["valid"])
        return ce + self.lam(epoch) * energy, {"ce": ce.detach(), "energy": energy.detach(),
                                                "correct": (logits.argmax(1) == batch.y).sum()}
