"""The method interface: what a training objective tells the trainer, and the batches it reads.

A method says, per epoch, which loss to optimise and which epochs may be selected, and
builds the per-image tensors its loss needs; the trainer does everything else and knows
no method by name (in the spirit of DomainBed). Each method is one module of this
package that registers itself with :func:`register_method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TrainConfig
from ..data.pipeline import as_rgb, to_input
from ..errors import L2LError
from ..nn.attribution import attention, minmax_normalize
from ..nn.backbones import Backbone
from ..nn.losses import kl_per_image, make_target, reverse_kl
from ..registry import Registry


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
    groups: Tensor | None = None  # (N,) group labels of spurious-correlation data (validation; methods that use them)
    size: int = 0  # input side that take() converts uint8 images to; 0: x holds inputs already
    transform: str = "none"  # the input transform take() applies to uint8 images
    key: str = ""  # identity of the rows (data set hash and row indices), naming their cached features

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Batch":
        """The whole split on ``device`` (still grey), so a GPU copies no batch from the host;
        uint8 images stay on the host, where they are converted."""
        return Batch(self.x if self.size else self.x.to(device), self.y.to(device),
                     {k: v.to(device) for k, v in self.aux.items()},
                     None if self.groups is None else self.groups.to(device), self.size, self.transform, self.key)

    def take(self, idx: Tensor, device: torch.device) -> "Batch":
        """Rows ``idx`` on ``device`` as network inputs, grey widened to RGB (kept grey in memory)."""
        x = to_input(self._upload(idx, device), self.size, self.transform) if self.size else self.x[idx]  # (B,C,S,S)
        x = x.to(device, non_blocking=True).float()
        return Batch(as_rgb(x), self.y[idx].to(device, non_blocking=True),
                     {k: v[idx].to(device, non_blocking=True) for k, v in self.aux.items()},
                     None if self.groups is None else self.groups[idx].to(device))


    def _upload(self, idx: Tensor, device: torch.device) -> Tensor:
        """uint8 rows ``idx`` where they are converted: on a GPU they go up as uint8 from
        pinned memory (4x fewer bytes than float) and are resized and normalised there;
        the colour-invariant transform, written in numpy, stays on the host."""
        raw = self.x[idx.cpu()]  # (B,C,H,W) uint8
        if device.type != "cuda" or self.transform != "none":
            return raw
        return raw.pin_memory().to(device, non_blocking=True)


class Method:
    """A training objective. The trainer asks it, per epoch, for the phase, lambda,
    whether to restart the optimiser and whether the epoch may be selected; per
    batch, for the loss; and, once per split, which per-image tensors (``aux``) its
    loss needs, built from the maps. It knows nothing else about the method."""

    name: ClassVar[str]
    #: Where the method comes from (authors, venue, year), and its rule in one line: the
    #: README's and the reports' method table is made from these.
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
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
    #: The config fields only this method reads, each with its default (declared once,
    #: here; a callable default is computed from the config): :func:`resolve` fills them in
    #: for this method and refuses them for others.
    options: ClassVar[dict[str, Any]] = {}
    #: Seconds per training epoch relative to vanilla's on the same network and data,
    #: which ``l2l reproduce --plan`` uses to cost a run nothing has timed yet. Measured
    #: on DecoyMNIST with the CDEP CNN, one thread, by scripts/epoch_cost.py.
    epoch_cost: ClassVar[float] = 1.0
    #: Whether training reads group labels (the data set must have them).
    needs_groups: ClassVar[bool] = False
    #: Whether the trained network reaches its inputs' pixels in the loss (input gradients,
    #: decompositions): such a method cannot train on cached features (``--freeze-until``).
    reads_pixels: ClassVar[bool] = False
    #: Whether the network goes back to its initial weights during training (:meth:`restarts_model`).
    restarts: ClassVar[bool] = False
    #: Share of the training split kept out of training, for a second stage (:meth:`after_fit`).
    holdout: ClassVar[float] = 0.0

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        #: The data set's irrelevant component (``DatasetSpec.shortcut``, or what the user
        #: stated with ``--irrelevant``), set by :func:`resolve`.
        self.irrelevant: str | None = None

    @property
    def component(self) -> str:
        """The irrelevant component: as resolved, else the registered data set's own."""
        if self.irrelevant is not None:
            return self.irrelevant
        from ..data import DATASETS

        return DATASETS.get(self.cfg.dataset).shortcut

    def option_defaults(self) -> dict[str, Any]:
        """The options (:attr:`options`) this configuration reads, with their defaults."""
        return dict(self.options)

    def relative_cost(self) -> float:
        """:attr:`epoch_cost` of this configuration."""
        return self.epoch_cost

    def check_dataset(self, spec: Any) -> None:
        """Raise before training when this method cannot work on the data set ``spec`` describes."""
        if self.needs_groups and not spec.group_names:
            raise L2LError(f"method {self.name} needs group labels and {spec.name} has none; use a data set with "
                           "groups (shapes-bg, --format waterbirds, or an import with a group column)")

    def check_options(self) -> None:
        """Raise when the method's own fields (filled in) cannot work together with the rest of the config."""

    def prepare(self, train: Batch) -> None:
        """Read what the method needs of the whole training split (class or group counts) before training."""

    def state_dict(self) -> dict[str, Any]:
        """What the method keeps between steps (tensors), saved with each checkpoint so a run resumes exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def before_epoch(self, epoch: int, model: Backbone, train: Batch, device: torch.device) -> None:
        """Called at the start of each epoch, before any step (JTT finds its error set here)."""

    def rows(self, epoch: int, n: int) -> Tensor | None:
        """The training rows of this epoch (repeats allowed), shuffled by the trainer; None: all ``n`` once."""
        return None

    def after_fit(self, model: Backbone, splits: dict[str, Batch | None],
                  embed: Callable[[Batch], Tensor]) -> dict[str, Any] | None:
        """A second stage on the selected ``model``, before the test split is read: last-layer
        retraining replaces its head here. ``splits``: "train", "val" and "held" (the rows
        :attr:`holdout` kept out); ``embed`` gives a split's cached pooled features (N, D).
        Returns what the record keeps of it, None for methods without one."""
        return None

    def restarts_model(self, epoch: int) -> bool:
        """Whether the network goes back to its initial weights at the start of ``epoch``."""
        return False

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
        """The attention target (N, h, w) at the feature map's resolution, summing to 1 per image;
        an outline at a network size of the user's (``network_size``) is pooled onto the grid."""
        kw: dict[str, Any] = {"size": backbone.feature_size}
        if self.cfg.target == "outline":
            kw |= {"threshold": self.cfg.target_threshold, "upsample": backbone.input_size,
                   "pool": self.cfg.network_size is not None}
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
