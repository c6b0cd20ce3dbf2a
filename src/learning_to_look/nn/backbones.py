"""Backbones: small CNNs that return their logits and the feature map attributions use.

Every backbone returns ``(logits, features)`` from ``forward`` so the training engine
can build a CAM or Grad-CAM from the same forward pass that gives the loss, without
hooks. A registry (as in DomainBed) lets configs and the CLI name them.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cd import cd_apply, cd_conv, cd_linear, cd_maxpool, cd_relu
from ..errors import L2LError
from ..registry import Registry

BACKBONES: Registry[type[Backbone]] = Registry("backbone")
#: Class decorator: make a backbone buildable by its ``name``.
register_backbone = BACKBONES.register


def backbone_class(name: str, size: int | None = None) -> type[Backbone]:
    """The registered backbone ``name``, at input side ``size`` (None: its own)."""
    cls = BACKBONES.get(name)
    return cls if size is None or size == cls.input_size else cls.at_size(size)


def build_backbone(name: str, num_classes: int = 10, in_channels: int = 3, size: int | None = None) -> Backbone:
    return backbone_class(name, size)(num_classes=num_classes, in_channels=in_channels)


class Backbone(nn.Module):
    """Base class. ``has_gap_classifier`` is True when the logits are a linear layer on
    globally average-pooled features: only then is CAM defined, from ``classifier_weight``.
    ``feature_size`` is the side of the feature map, declared so that attention targets
    can be built at that resolution without running the network."""

    name: ClassVar[str]
    input_size: ClassVar[int]
    feature_size: ClassVar[int]
    has_gap_classifier: ClassVar[bool]
    #: Whether ImageNet weights can be loaded (``--pretrained``).
    pretrainable: ClassVar[bool] = False
    #: Whether the network takes any input side (convolutions then global pooling); a
    #: flatten + MLP head fixes it to ``input_size``.
    any_size: ClassVar[bool] = False
    #: Named parts, in order, that the network can be frozen up to (``--freeze-until``).
    stages: ClassVar[tuple[str, ...]] = ()
    #: Names of the classifier head's parameters start with this (its own learning rate).
    head_prefix: ClassVar[str] = "fc."
    #: Whether it trains in the channels_last layout on a GPU (cuDNN's faster NHWC kernels).
    channels_last: ClassVar[bool] = False

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B,K), features (B,C,h,w))``."""
        raise NotImplementedError

    @classmethod
    def feature_side(cls, size: int) -> int:
        """The feature map's side for input side ``size``."""
        raise NotImplementedError

    @classmethod
    @functools.cache
    def at_size(cls, size: int) -> type[Backbone]:
        """This backbone taking ``size`` x ``size`` inputs, so images keep their own size and
        the CAM's resolution follows them; the weights are the same, only the declared sides
        change. One class per size (cached), registered under the same name."""
        if not cls.any_size:
            raise L2LError(f"backbone {cls.name!r} takes {cls.input_size} px inputs only (its head is a flattened "
                           "MLP); leave --network-size unset, or use --backbone lenet-gap or a ResNet (any size)")
        feature = cls.feature_side(size)
        if feature < 1:
            raise L2LError(f"backbone {cls.name!r} needs inputs of at least {cls.smallest_size()} px, got {size}; "
                           f"pass --network-size {cls.smallest_size()} or more")
        return type(cls.__name__, (cls,), {"input_size": size, "feature_size": feature, "__module__": cls.__module__})

    @classmethod
    def smallest_size(cls) -> int:
        return next(s for s in range(1, 4096) if cls.feature_side(s) >= 1)

    @property
    def classifier_weight(self) -> Tensor:
        raise L2LError(f"backbone {self.name!r} has no linear-on-GAP classifier, so CAM is undefined; use Grad-CAM")

    def embed(self, x: Tensor) -> Tensor:
        """The input of the linear head (B, D), which last-layer retraining (DFR, AFR) fits on."""
        raise L2LError(f"backbone {self.name!r} has no linear head on pooled features to retrain; use "
                       "--backbone lenet-gap, resnet18 or resnet50")

    @property
    def head(self) -> nn.Linear:
        """The linear head on :meth:`embed`."""
        return self.fc

    def decompose(self, part: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        """Contextual decomposition (:mod:`learning_to_look.cd`) of the logits into what the
        input ``part`` gives alone and the rest, ``part + rest`` being the input (B,3,S,S)."""
        raise L2LError(f"contextual decomposition does not support backbone {self.name!r} (batch norm and residual "
                       "connections have no CD rule here); use --backbone lenet-gap or cdep-cnn")

    def _check_input(self, x: Tensor) -> None:
        """Fail with the fix rather than with a shape error deep inside a layer (or, for
        GAP models, silently with feature maps that no longer match the targets)."""
        want = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise L2LError(
                f"backbone {self.name!r} expects input (B, {want[0]}, {want[1]}, {want[2]}), "
                f"got {tuple(x.shape)}; resize the images to {self.input_size}x{self.input_size} "
                f"with {self.in_channels} channel(s)"
            )


@register_backbone
class LeNetGAP(Backbone):
    """The paper's ~3k-parameter LeNet with a GAP head (PROTOCOL 3.1)."""

    name = "lenet-gap"
    input_size = 32
    feature_size = 10  # 32 -conv5-> 28 -pool2-> 14 -conv5-> 10
    has_gap_classifier = True
    any_size = True

    @classmethod
    def feature_side(cls, size: int) -> int:
        side = (size - 4) // 2 - 4  # conv5, pool2, conv5
        return side if side >= 2 else 0  # the head's 2x2 max pool needs a side of 2 or more

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        features = self.conv2(h)
        return self.fc(self._pool(features)), features

    @staticmethod
    def _pool(features: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(features), 2).mean(dim=(2, 3))  # (B,16)

    def embed(self, x: Tensor) -> Tensor:
        return self._pool(self.forward(x)[1])

    @property
    def classifier_weight(self) -> Tensor:
        return self.fc.weight

    def decompose(self, part: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(part + rest)
        p, r = cd_relu(*cd_conv(part, rest, self.conv1))
        p, r = cd_relu(*cd_conv(*cd_maxpool(p, r, 2), self.conv2))
        p, r = cd_apply(*cd_maxpool(p, r, 2), lambda x: x.mean(dim=(2, 3)))  # (B,16) each
        return cd_linear(p, r, self.fc)


@register_backbone
class CDEPNet(Backbone):
    """The CNN of the CDEP paper (Rieger et al. 2020), for comparing with its numbers;
    its flatten+MLP head has no CAM, only Grad-CAM on the last conv layer."""

    name = "cdep-cnn"
    input_size = 28
    feature_size = 8  # 28 -conv5-> 24 -pool2-> 12 -conv5-> 8
    has_gap_classifier = False
    head_prefix = "fc2."

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        features = F.relu(self.conv2(h))
        h = torch.flatten(F.max_pool2d(features, 2), 1)
        return self.fc2(F.relu(self.fc1(h))), features

    def decompose(self, part: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(part + rest)
        p, r = cd_relu(*cd_conv(part, rest, self.conv1))
        p, r = cd_relu(*cd_conv(*cd_maxpool(p, r, 2), self.conv2))
        p, r = cd_apply(*cd_maxpool(p, r, 2), lambda x: torch.flatten(x, 1))  # (B,800) each
        p, r = cd_relu(*cd_linear(p, r, self.fc1))
        return cd_linear(p, r, self.fc2)


# ---- ResNets for ordinary images (He et al. 2016), with a GAP + linear head --------------------
# Module names follow timm's (and torchvision's) ResNet: conv1, bn1, layer1-4 with blocks
# conv1/bn1 ... and downsample.0/1, fc; so a timm ImageNet checkpoint loads key for key
# (learning_to_look.pretrained).


def _shortcut(inp: int, out: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN where the block changes resolution or width (timm's ``downsample``)."""
    if stride == 1 and inp == out:
        return None
    return nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(inp, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 conv, as in timm and torchvision."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _shortcut(inp, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(h)) + (x if self.downsample is None else self.downsample(x)))


#: ImageNet's per-channel mean and std, the input statistics timm's ResNet weights were trained on.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ResNetGAP(Backbone):
    """A ResNet whose logits are a linear layer on the GAP of the last stage, so its CAM
    is exact (on that 7x7 stage at 224 px). Subclasses name the block and the depths.
    The model takes the project's [-1, 1] input and normalises it by ImageNet's mean and
    std itself, as pretrained weights expect; input gradients stay on the project's scale."""

    input_size = 224
    channels_last = True
    feature_size = 7  # 224 / 32
    has_gap_classifier = True
    pretrainable = True
    any_size = True
    stages = ("stem", "layer1", "layer2", "layer3", "layer4")
    block: ClassVar[type[BasicBlock] | type[Bottleneck]]
    depths: ClassVar[tuple[int, int, int, int]]

    @classmethod
    def feature_side(cls, size: int) -> int:
        for _ in range(5):  # the stem's conv and pool, then layers 2-4: each halves, rounding up
            size = (size + 1) // 2
        return size

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        width = 64
        for i, (depth, planes) in enumerate(zip(self.depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(depth):
                blocks.append(self.block(width, planes, 2 if i > 0 and j == 0 else 1))
                width = planes * self.block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(width, num_classes)
        # not in the state dict: checkpoints and timm weights keep their keys
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for m in self.modules():  # He init, as timm and torchvision do
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        #: A stage whose output ``forward`` takes instead of images (a frozen part's cached
        #: output, ``--freeze-until``); None: images.
        self.start_after: str | None = None

    def _stem(self, x: Tensor) -> Tensor:
        x = ((x + 1) / 2 - self.mean) / self.std  # (B,3,S,S): [-1, 1] -> ImageNet statistics
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (B,64,S/4,S/4)

    def _part(self, stage: str) -> Any:
        return self._stem if stage == "stem" else getattr(self, stage)

    def run_until(self, x: Tensor, stage: str) -> Tensor:
        """The output of ``stage`` (B,C,h,w) for images ``x``: what a frozen part computes."""
        self._check_input(x)
        for name in self.stages[:self.stages.index(stage) + 1]:
            x = self._part(name)(x)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.start_after is None:
            self._check_input(x)
        begin = 0 if self.start_after is None else self.stages.index(self.start_after) + 1
        for name in self.stages[begin:]:
            x = self._part(name)(x)
        return self.fc(x.mean(dim=(2, 3))), x  # features (B,C,S/32,S/32), 7x7 at 224

    def embed(self, x: Tensor) -> Tensor:
        return self.forward(x)[1].mean(dim=(2, 3))  # (B,C)

    @property
    def classifier_weight(self) -> Tensor:
        return self.fc.weight


@register_backbone
class ResNet18(ResNetGAP):
    name = "resnet18"
    block = BasicBlock
    depths = (2, 2, 2, 2)


@register_backbone
class ResNet50(ResNetGAP):
    name = "resnet50"
    block = Bottleneck
    depths = (3, 4, 6, 3)
