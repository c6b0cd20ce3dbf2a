"""Contextual decomposition (exact split of the logits, hand-computed rules) and the cdep method."""

import pytest
import torch
from torch import nn

from learning_to_look.nn.cd import cd_linear, cd_maxpool, cd_relu, cdep_score
from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.methods import METHODS, Batch
from learning_to_look.training.resolve import resolve
from learning_to_look.nn.backbones import build_backbone


@pytest.mark.parametrize("name", ["lenet-gap", "cdep-cnn"])
def test_part_plus_rest_is_the_logits(name):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = torch.randn(5, 3, model.input_size, model.input_size)
    region = (torch.rand(5, 1, model.input_size, model.input_size) > 0.8).float()
    part, rest = model.decompose(region * x, (1 - region) * x)
    assert torch.allclose(part + rest, model(x)[0], atol=1e-5)
    nothing, everything = model.decompose(torch.zeros_like(x), x)  # an empty part gets only its share of biases
    assert torch.allclose(nothing + everything, model(x)[0], atol=1e-5)


def test_one_linear_and_relu_layer_by_hand():
    fc = nn.Linear(2, 1)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, -2.0]]))
        fc.bias.fill_(0.6)
    part, rest = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # W part = 3, W rest = -2; the bias 0.6 splits 3 : 2 by absolute value -> 0.36 and 0.24
    p, r = cd_linear(part, rest, fc)
    assert p.item() == pytest.approx(3.36) and r.item() == pytest.approx(-1.76)
    # ReLU: the part alone relu(3.36) = 3.36; the rest relu(3.36 - 1.76) - 3.36 = -1.76
    p, r = cd_relu(p, r)
    assert p.item() == pytest.approx(3.36) and r.item() == pytest.approx(-1.76)
    p, r = cd_relu(torch.tensor([-1.0]), torch.tensor([3.0]))
    assert p.item() == 0 and r.item() == 2.0


def test_maxpool_takes_both_sides_where_the_sum_peaks():
    part = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]]]])
    rest = torch.tensor([[[[-4.0, 2.0], [0.0, 0.0]]]])  # sums 1, 2, 0, 0: the peak is top right
    p, r = cd_maxpool(part, rest, 2)
    assert p.item() == 0.0 and r.item() == 2.0


def test_cdep_score_by_hand():
    import math

    part, rest = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert cdep_score(part, rest).item() == pytest.approx((0.5 + 1 / (1 + math.exp(-2))) / 2)


def _method(**kw):
    return METHODS.get("cdep")(resolve(TrainConfig(method="cdep", **kw)))


def test_cdep_reads_the_component_each_data_set_declares():
    region = _method(dataset="decoymnist", backbone="cdep-cnn", maps="not-decoy")
    colour = _method(dataset="colormnist", backbone="lenet-gap")
    assert region.uses_maps and region.cfg.lambda0 == 100.0
    assert not colour.uses_maps and colour.cfg.maps == "none" and colour.cfg.lambda0 == 1000.0
    with pytest.raises(L2LError, match="mnist declares none"):
        _method(dataset="mnist")
    with pytest.raises(L2LError, match="does not support"):
        _method(dataset="decoymnist", backbone="resnet18")


def test_cdep_losses_are_ce_plus_lambda_times_a_score():
    torch.manual_seed(0)
    for m in (_method(dataset="decoymnist", backbone="cdep-cnn", maps="not-decoy"),
              _method(dataset="colormnist", backbone="lenet-gap")):
        model = build_backbone(m.cfg.backbone)
        s = model.input_size
        x = torch.rand(4, 3, s, s) * 2 - 1
        aux = {"irrelevant": torch.zeros(4, 1, s, s).index_fill_(3, torch.tensor([0, 1]), 1.0)}
        loss, stats = m.loss(model, Batch(x, torch.tensor([0, 1, 2, 3]), aux), epoch=0)
        assert 0 < stats["cdep"].item() <= (m.PIXELS if not m.uses_maps else 1)
        assert loss.item() == pytest.approx(stats["ce"].item() + m.cfg.lambda0 * stats["cdep"].item(), rel=1e-5)
        loss.backward()
        assert model.conv1.weight.grad.abs().sum() > 0  # the penalty trains the network
