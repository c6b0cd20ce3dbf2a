"""Training methods behind a registry, one class each (in the spirit of DomainBed).

A method says, per epoch, which loss to optimise and which epochs may be
selected, and builds the per-image tensors its loss needs; the trainer does
everything else and knows no method by name. Adding a method is one class here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .attribution import attention, expected_gradients, input_gradients, minmax_normalize
from .cd import cdep_score
from .config import TrainConfig
from .data.pipeline import as_rgb, to_input
from .errors import L2LError
from .losses import (TARGETS, attribution_mass, forward_kl, kl_per_image, lambda_schedule, make_target, reverse_kl,
                     rrr_penalty)
from .models import BACKBONES, Backbone
from .registry import Registry


@dataclass
class Batch:
    """Inputs, labels and the per-image tensors a method asked for (``aux``): a whole
    split held in memory, or one mini-batch of it taken with :meth:`take`.

    A split too large to hold as float inputs keeps its uint8 images (``size`` > 0):
    :meth:`take` then resizes and normalises each mini-batch on the way, so memory stays
    that of the images, whatever the network's input size."""

    x: Tensor  # (N, C, H, W) normalised inputs, or uint8 images when size > 0; C = 1 is widened to 3 by take()
    y: Tensor  # (N,) labels
    aux: dict[str, Tensor] = field(default_factory=dict)  # name -> (N, ...)
    groups: Tensor | None = None  # (N,) group labels of spurious-correlation data, read by validation only
    size: int = 0  # input side that take() converts uint8 images to; 0: x holds inputs already
    transform: str = "none"  # the input transform take() applies to uint8 images

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Batch":
        """The whole split on ``device`` (still grey), so a GPU copies no batch from the host;
        uint8 images stay on the host, where they are converted."""
        return Batch(self.x if self.size else self.x.to(device), self.y.to(device),
                     {k: v.to(device) for k, v in self.aux.items()},
                     None if self.groups is None else self.groups.to(device), self.size, self.transform)

    def take(self, idx: Tensor, device: torch.device) -> "Batch":
        """Rows ``idx`` on ``device`` as network inputs, grey widened to RGB (kept grey in memory)."""
        x = to_input(self.x[idx.cpu()], self.size, self.transform) if self.size else self.x[idx]  # (B,C,S,S)
        return Batch(as_rgb(x.to(device, non_blocking=True)), self.y[idx].to(device, non_blocking=True),
                     {k: v[idx].to(device, non_blocking=True) for k, v in self.aux.items()})


class Method:
    """A training objective. The trainer asks it, per epoch, for the phase, lambda,
    whether to restart the optimiser and whether the epoch may be selected; per
    batch, for the loss; and, once per split, which per-image tensors (``aux``) its
    loss needs, built from the maps. It knows nothing else about the method."""

    name: ClassVar[str]
    uses_maps: ClassVar[bool] = False
    two_phase: ClassVar[bool] = False
    #: Default of lambda0, the weight of the method's extra term (declared once, here);
    #: 0 for a method with no extra term, where :func:`resolve` keeps lambda0 at 0.
    default_lambda: ClassVar[float] = 0.0
    #: Default model-selection rule on validation data (PROTOCOL 3.6).
    default_selection: ClassVar[str] = "val_acc"
    #: Which map :func:`~learning_to_look.attribution.attention` gives this method.
    attention_kind: ClassVar[str] = "auto"
    #: Whether the stacked trainer can run it: its loss is ``loss_weights`` applied to
    #: the cross-entropy and the CAM alignment KL, and nothing else (PROTOCOL 3.7).
    stackable: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def check_dataset(self, spec: Any) -> None:
        """Raise before training when this method cannot work on the data set ``spec`` describes."""

    def lambda_default(self) -> float:
        """lambda0 when the config leaves it unset."""
        return self.default_lambda

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        """Raise before training when this method cannot work on ``model`` (or its class)."""
        if self.attention_kind == "cam" and not model.has_gap_classifier:
            raise L2LError(f"method {self.name} needs CAM, which needs a global-average-pooling backbone; "
                           f"use --method gradcam-kl with {model.name}, or --backbone lenet-gap")

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """Per-image tensors the loss reads from each batch, built once from the maps (N, H, W)."""
        return {}

    def phase(self, epoch: int) -> str:
        """'ce', 'attention' (alignment only) or 'joint' (CE + lambda * alignment)."""
        return "ce"

    def eligible(self, epoch: int) -> bool:
        """Whether this epoch's weights may be selected."""
        return True

    def resets_optimizer(self, epoch: int) -> bool:
        return False

    def lam(self, epoch: int) -> float:
        return float(self.cfg.lambda0 or 0.0)

    def loss_weights(self, epoch: int) -> tuple[float, float]:
        """(weight of the cross-entropy, weight of the attention alignment) in this epoch."""
        return 1.0, 0.0

    def target(self, maps: Tensor, backbone: type[Backbone]) -> Tensor:
        """The attention target (N, h, w) at the feature map's resolution, summing to 1 per image."""
        kw: dict[str, Any] = {"size": backbone.feature_size}
        if self.cfg.target == "outline":
            kw |= {"threshold": self.cfg.target_threshold, "upsample": backbone.input_size}
        return make_target(self.cfg.target, maps, **kw)

    def attention(self, model: Backbone, x: Tensor, y: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor]:
        """(logits (B,K), attention map (B,h,w) of the true class, min-max normalised to [0, 1])."""
        logits, raw = attention(model, x, y, create_graph=create_graph, kind=self.attention_kind)
        return logits, minmax_normalize(raw)

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = model(batch.x)  # (B,K)
        ce = F.cross_entropy(logits, batch.y)
        return ce, {"ce": ce.detach(), "correct": (logits.argmax(1) == batch.y).sum()}

    @torch.no_grad()
    def validate(self, model: Backbone, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, per-image metrics (B,) whose nan-mean is logged as ``val_<name>``): with a
        target, forward and reverse KL of the attention to it, which selection may use."""
        if "target" not in batch.aux:
            logits, _ = model(batch.x)
            return logits, {}
        logits, s = self.attention(model, batch.x, batch.y, create_graph=False)
        s, q = s.detach().float().cpu(), batch.aux["target"].float().cpu()  # (B,h,w) each
        return logits, {"kl": kl_per_image(s, q), "rkl": reverse_kl(s, q, reduction="none")}


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register


@register_method
class Vanilla(Method):
    """Cross-entropy only: the shortcut-prone baseline."""

    name = "vanilla"


@register_method
class L2L(Method):
    """Learning to Look (PROTOCOL 3.5): align the CAM with the map's target, first
    alone (or after CE-only epochs with ``phase1='ce'``), then jointly with CE
    under a growing lambda; optimiser and scheduler restart at E_att."""

    name = "l2l"
    uses_maps = True
    two_phase = True
    default_lambda = 160.0  # the paper's lambda0 (PROTOCOL 3.5)
    default_selection = "acc_x_1mkl"
    attention_kind = "cam"  # exact for the paper's GAP network

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        target = self.target(maps, backbone)  # (N,h,w)
        if len(target) and not bool(target.flatten(1).sum(1).gt(0).any()):
            raise L2LError(f"every {self.cfg.target} attention target from maps {self.cfg.maps} is empty, so the "
                           "alignment term would teach nothing (a map that covers the whole image has no outline); "
                           "use --target filled, or a map source that singles out the object")
        return {"target": target}

    def phase(self, epoch: int) -> str:
        if epoch >= self.cfg.e_att:
            return "joint"
        return "attention" if self.cfg.phase1 == "attention" else "ce"

    def eligible(self, epoch: int) -> bool:
        return epoch >= self.cfg.e_att

    def resets_optimizer(self, epoch: int) -> bool:
        return epoch == self.cfg.e_att and epoch > 0

    def lam(self, epoch: int) -> float:
        return lambda_schedule(epoch, self.cfg.e_att, float(self.cfg.lambda0), self.cfg.lambda_ramp)

    def loss_weights(self, epoch: int) -> tuple[float, float]:
        return {"ce": (1.0, 0.0), "attention": (0.0, 1.0), "joint": (1.0, self.lam(epoch))}[self.phase(epoch)]

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        w_ce, w_attn = self.loss_weights(epoch)
        if not w_attn:
            return super().loss(model, batch, epoch)
        logits, s = self.attention(model, batch.x, batch.y)  # (B,K), (B,h,w)
        kl = forward_kl(s, batch.aux["target"])
        stats = {"attn": kl.detach(), "correct": (logits.argmax(1) == batch.y).sum()}
        if not w_ce:  # attention only: the fc bias gets no gradient at all (PROTOCOL 3.7)
            return w_attn * kl, stats
        ce = F.cross_entropy(logits, batch.y)
        return w_ce * ce + w_attn * kl, stats | {"ce": ce.detach()}


@register_method
class GradCAMKL(L2L):
    """The same alignment and schedule with Grad-CAM in place of CAM, so it also runs
    on networks without global average pooling."""

    name = "gradcam-kl"
    attention_kind = "grad-cam"
    stackable = False


class RegionPrior(Method):
    """CE plus a penalty on how much the model uses the irrelevant region, 1 - map at
    input resolution: the family of RRR, Expected Gradients and CDEP, which differ only
    in :meth:`penalty`. The same maps (e.g. ``not-decoy``) serve all of them."""

    uses_maps = True
    stackable = False  # the penalty is on input attributions, not the CAM

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """Where the input attribution is penalised, 1 - map at input resolution (N, 1, H, W);
        the target too, for the validation alignment diagnostic only (never the loss)."""
        relevant = F.interpolate(maps[:, None], size=(backbone.input_size,) * 2, mode="bilinear", align_corners=False)
        return {"target": self.target(maps, backbone), "irrelevant": 1 - relevant.clamp(0, 1)}

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        """The scalar penalty of a batch; ``x`` is the batch's input in the graph, ``logits`` the model's on it."""
        raise NotImplementedError

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch.x.detach().requires_grad_(True)  # (B,3,H,W)
        logits, _ = model(x)
        ce = F.cross_entropy(logits, batch.y)
        penalty = self.penalty(model, batch, x, logits)
        return ce + self.lam(epoch) * penalty, {"ce": ce.detach(), self.name: penalty.detach(),
                                                 "correct": (logits.argmax(1) == batch.y).sum()}


@register_method
class RRR(RegionPrior):
    """Right for the Right Reasons (Ross et al. 2017): penalise input gradients of the
    summed log-probabilities outside the map. Lambda 100 follows Ross et al.'s rule
    of thumb: it puts the penalty on the order of the cross-entropy (measured on
    DecoyMNIST training batches, where it was 0.01 per image)."""

    name = "rrr"
    default_lambda = 100.0  # Ross et al.'s rule of thumb, see the class docstring

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        return rrr_penalty(input_gradients(logits, x, create_graph=True), batch.aux["irrelevant"])


@register_method
class ExpectedGradients(RegionPrior):
    """An attribution prior (Erion et al. 2021): the absolute Expected Gradients of the
    true class on the irrelevant region. Each image gets one reference, another image of
    the same batch, and one interpolation point per step, as in the paper. Lambda 300
    puts the term on the order of the cross-entropy at initialisation, by Ross et al.'s
    rule of thumb (measured on DecoyMNIST with not-decoy maps and a fresh LeNet-GAP:
    0.0072 per image, so 2.2 against a cross-entropy of 2.31)."""

    name = "eg"
    default_lambda = 300.0  # the rule of thumb, see the class docstring

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        refs = batch.x[torch.randperm(len(batch.x), device=batch.x.device)]  # (B,3,H,W) one reference per image
        alpha = torch.rand(len(batch.x), device=batch.x.device)  # (B,)
        eg = expected_gradients(model, batch.x, batch.y, refs, alpha)  # (B,3,H,W)
        return attribution_mass(eg, batch.aux["irrelevant"])


@register_method
class CDEP(RegionPrior):
    """Contextual decomposition explanation penalisation (Rieger et al. 2020): CE plus
    lambda times the CDEP score (:func:`~learning_to_look.cd.cdep_score`) of the input
    component the data set declares irrelevant (``DatasetSpec.shortcut``):
    - "region": the component is 1 - map at input resolution, as for RRR and EG, so the
      same maps (e.g. ``not-decoy``) serve all three;
    - "colour" (ColorMNIST): single pixels, all channels, as in CDEP's own ColorMNIST
      code: a pixel alone carries its colour but not the digit's shape. Each step draws
      ``PIXELS`` of them, each position with probability the share of the batch's images
      that are not background there (theirs: of the whole training set), and sums their
      scores.
    Lambda defaults are values from CDEP's own sweeps, one per component (the values its
    paper chose were not in the sources read)."""

    name = "cdep"
    default_lambda = 100.0  # region shortcuts: from CDEP's DecoyMNIST sweep {1, 10, 100, 1000, 10000}
    COLOUR_LAMBDA = 1000.0  # colour: from CDEP's ColorMNIST sweep {0.1, 1, 500, 1000, 5000}
    PIXELS = 8  # single-pixel components per step, CDEP's ColorMNIST num_blobs

    def _shortcut(self) -> str:
        from .data import DATASETS

        return DATASETS.get(self.cfg.dataset).shortcut

    @property
    def uses_maps(self) -> bool:  # type: ignore[override]
        return self._shortcut() == "region"

    def lambda_default(self) -> float:
        return self.COLOUR_LAMBDA if self._shortcut() == "colour" else self.default_lambda

    def check_dataset(self, spec: Any) -> None:
        if spec.shortcut == "none":
            raise L2LError(f"method cdep penalises the input component a data set declares irrelevant, and "
                           f"{spec.name} declares none; use a data set with a shortcut (e.g. colormnist, decoymnist)")

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        cls = model if isinstance(model, type) else type(model)
        if cls.decompose is Backbone.decompose:
            raise L2LError(f"method cdep needs contextual decomposition, which backbone {cls.name!r} does not "
                           "support (batch norm, residual connections); use --backbone lenet-gap or cdep-cnn")

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        x = batch.x  # (B,3,S,S)
        if self._shortcut() == "region":
            part = batch.aux["irrelevant"] * x  # (B,3,S,S)
            return cdep_score(*model.decompose(part, x - part))
        b, _, h, w = x.shape
        seen = (x.amax(dim=1) > x.amin()).float().mean(0).flatten()  # (S*S,) share not background
        where = torch.multinomial(seen + (seen.sum() == 0).float(), self.PIXELS, replacement=True)  # (P,)
        masks = F.one_hot(where, h * w).view(self.PIXELS, 1, 1, h, w).to(x.dtype)  # (P,1,1,S,S)
        part = (masks * x).flatten(0, 1)  # (P*B,3,S,S): each pixel alone, for every image
        return self.PIXELS * cdep_score(*model.decompose(part, x.repeat(self.PIXELS, 1, 1, 1) - part))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Validate the whole config and fill the method's defaults into unset fields.
    Called once, where a run enters (:func:`learning_to_look.train.run`, a profile's
    plan); everything downstream takes the resolved config as it is, so a config that
    cannot train is refused here, before any data is loaded or folder made."""
    from .data import DATASETS
    from .maps.options import check_map_options
    from .pretrained import check_pretrained

    cfg = dataclasses.replace(cfg).validate().with_schedule_defaults()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise L2LError(f"device {cfg.device} requested but CUDA is not available; pass --device cpu (or auto)")
    method = METHODS.get(cfg.method)(cfg)
    spec = DATASETS.get(cfg.dataset)
    method.check_dataset(spec)
    if cfg.selection == "val_worst_group" and not spec.group_names:
        grouped = ", ".join(d.name for d in DATASETS.values() if d.group_names)
        raise L2LError(f"--selection val_worst_group needs group labels and {spec.name} has none; use --selection "
                       f"val_acc, or a data set with groups ({grouped})")
    TARGETS.get(cfg.target)
    method.check_backbone(BACKBONES.get(cfg.backbone))
    check_pretrained(cfg.backbone, cfg.pretrained)
    if method.two_phase and cfg.e_att >= cfg.epochs:
        raise L2LError(f"E_att must lie below the number of epochs, got {cfg.e_att} with {cfg.epochs} epochs; "
                       "pass --e-att below --epochs")
    if cfg.lambda0 is None or not method.default_lambda:  # a λ given to vanilla weighs nothing: not recorded
        cfg.lambda0 = method.lambda_default()
    if cfg.selection is None:
        cfg.selection = method.default_selection
    if not method.uses_maps:
        cfg.maps = "none"
        cfg.map_options = {}
    else:
        check_map_options(cfg.maps, cfg.map_options)
    return cfg
