"""Hand-computed checks at the seams between the math and the engine: the L2L and RRR
losses on a toy network whose features are its input, and evaluate_split on a
2-image split where every share can be counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from learning_to_look.config import TrainConfig
from learning_to_look.data import Split
from learning_to_look.training.evaluate import evaluate_split
from learning_to_look.methods import METHODS, Batch
from learning_to_look.training.resolve import resolve
from learning_to_look.nn.backbones import Backbone


class Toy(Backbone):
    """features = first input channel + ``shift``; logits = W * GAP(features), W = [[1], [2]]."""

    name = "toy"
    has_gap_classifier = True

    def __init__(self, size: int, shift: float = 0.0) -> None:
        super().__init__(num_classes=2, in_channels=1)
        self.input_size = self.feature_size = size
        self.shift = shift
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [2.0]]))

    def forward(self, x):
        feats = x[:, :1] + self.shift  # (B,1,h,w)
        return self.fc(feats.mean(dim=(2, 3))), feats

    @property
    def classifier_weight(self):
        return self.fc.weight


def method(name: str, **kw):
    return METHODS.get(name)(resolve(TrainConfig(method=name, epochs=4, e_att=2, **kw)))


X = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # one 2x2 image; CAM of class 0 is X itself
Y = torch.tensor([0])


def test_l2l_loss_by_hand():
    target = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    batch = Batch(X, Y, {"target": target})
    l2l = method("l2l")
    # Phase 1: KL(q || softmax(minmax(CAM))) = -log p(bottom right); minmax(X) = [0, 1/3, 2/3, 1].
    s = [0.0, 1 / 3, 2 / 3, 1.0]
    kl = -math.log(math.exp(1.0) / sum(math.exp(v) for v in s))
    loss, stats = l2l.loss(Toy(2), batch, epoch=0)
    assert loss.item() == pytest.approx(kl, rel=1e-6) and stats["attn"].item() == pytest.approx(kl, rel=1e-6)
    # Joint phase at epoch 3: CE + lambda_3 * KL, logits = [1.5, 3.0], lambda_3 = 160 * (1 + 1/10).
    ce = math.log(1 + math.exp(1.5))
    loss, stats = l2l.loss(Toy(2), batch, epoch=3)
    assert stats["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 176.0 * kl, rel=1e-6)


def test_rrr_loss_by_hand():
    irrelevant = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # the top row
    batch = Batch(X, Y, {"irrelevant": irrelevant})
    # d/dx sum_k log softmax_k = sum_j (1 - 2 softmax_j) * W_j / 4 on every pixel.
    p1 = 1 / (1 + math.exp(-1.5))  # softmax of class 1 for logits [1.5, 3.0]
    g = ((1 - 2 * (1 - p1)) * 1 + (1 - 2 * p1) * 2) / 4
    penalty = 2 * g ** 2  # two irrelevant pixels
    ce = math.log(1 + math.exp(1.5))
    loss, stats = method("rrr").loss(Toy(2), batch, epoch=0)
    assert stats["rrr"].item() == pytest.approx(penalty, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 100.0 * penalty, rel=1e-5)


def two_image_split() -> Split:
    """Image 0: a 2x2 digit and a bright decoy in the top-left corner; image 1: the digit
    and a decoy of intensity 0. Labels 1 and 0; the toy network always predicts 1."""
    digits = np.zeros((2, 28, 28), np.uint8)
    digits[:, 12:14, 12:14] = 255
    images = digits[:, None].copy()
    images[0, 0, :5, :5] = 255
    return Split("test", images, np.array([1, 0]), digits, corners=np.zeros((2, 2), np.int64), decoy_size=5)


def test_evaluate_split_by_hand():
    # Inputs are scaled to [-1, 1], so features = input + 1 are 2 on bright pixels, 0 elsewhere.
    m = evaluate_split(Toy(28, shift=1.0), two_image_split())
    assert m["accuracy"] == 50.0 and m["n"] == 2
    digit, decoy = 4 * 2.0, 25 * 2.0  # CAM mass of each region in image 0
    assert m["cam_on_digit"] == pytest.approx((digit / (digit + decoy) + 1.0) / 2, rel=1e-6)
    assert m["cam_on_decoy"] == pytest.approx((decoy / (digit + decoy) + 0.0) / 2, rel=1e-6)
    # The true logit's input gradient is uniform over the 784 pixels; the dilated digit covers 4x4.
    assert m["grad_on_digit"] == pytest.approx(16 / 784, rel=1e-5)
    assert m["grad_on_decoy"] == pytest.approx(25 / 784, rel=1e-5)
    assert math.isfinite(m["kl_to_oracle"]) and m["kl_to_oracle"] >= 0


def test_expected_gradients_of_a_linear_model_is_closed_form():
    """For logits linear in the input, every interpolation point has the same gradient,
    so EG = (x - x') * W_y / (h w) on the read channel whatever alpha is, and its sum is
    the logit difference f_y(x) - f_y(x') (completeness)."""
    from learning_to_look.nn.attribution import expected_gradients

    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[4.0, 0.0], [1.0, 1.0]]]])  # (2,1,2,2)
    refs, y = x.flip(0), torch.tensor([0, 1])
    model = Toy(2)
    for alpha in (torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.7])):
        eg = expected_gradients(model, x, y, refs, alpha, create_graph=False)  # (2,1,2,2)
        w = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)  # W_y of each image's label
        assert torch.allclose(eg, (x - refs) * w / 4)
        logit = lambda v: model(v)[0].gather(1, y.view(-1, 1))[:, 0]  # noqa: E731
        assert torch.allclose(eg.sum((1, 2, 3)), logit(x) - logit(refs))


def test_attribution_mass_and_the_eg_loss_by_hand():
    from learning_to_look.nn.losses import attribution_mass

    attr = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # (2,1,2,2)
    irrelevant = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.0, 0.0]]])  # (2,2,2)
    assert attribution_mass(attr, irrelevant).item() == pytest.approx(((1 + 4) + (0.5 + 0.5)) / 2)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[4.0, 0.0], [1.0, 1.0]]]])
    batch = Batch(x, torch.tensor([0, 1]), {"irrelevant": torch.ones(2, 1, 2, 2)})
    eg = method("eg")
    loss, stats = eg.loss(Toy(2), batch, epoch=0)
    ce = torch.nn.functional.cross_entropy(Toy(2)(x)[0], batch.y)
    assert stats["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert loss.item() == pytest.approx(ce.item() + eg.cfg.lambda0 * stats["eg"].item(), rel=1e-5)
    # the references are a permutation of the batch: both images drew themselves (no mass) or each other
    other = (x - x.flip(0)).abs().sum((1, 2, 3)) * torch.tensor([1.0, 2.0]) / 4  # |x - x'| W_y / 4 summed
    assert stats["eg"].item() in [pytest.approx(0.0), pytest.approx(other.mean().item())]
