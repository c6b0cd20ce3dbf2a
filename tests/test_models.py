"""Backbones: registry, parameter counts, shapes, and which tensor is the feature map."""

import pytest
import torch
import torch.nn.functional as F

from learning_to_look.errors import L2LError
from learning_to_look.nn.backbones import BACKBONES, CDEPNet, LeNetGAP, build_backbone, register_backbone


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_both_backbones():
    assert BACKBONES["lenet-gap"] is LeNetGAP
    assert BACKBONES["cdep-cnn"] is CDEPNet


def test_unknown_backbone_lists_choices():
    with pytest.raises(L2LError, match=r"unknown backbone 'resnet'.*lenet-gap, cdep-cnn"):
        build_backbone("resnet")


def test_register_rejects_duplicate_name():
    with pytest.raises(ValueError, match="twice"):
        register_backbone(LeNetGAP)


@pytest.mark.parametrize("name", ["lenet-gap", "cdep-cnn"])
def test_declared_feature_size_matches_the_network(name):
    model = build_backbone(name)
    _, feats = model(torch.zeros(1, 3, model.input_size, model.input_size))
    assert feats.shape[-2:] == (model.feature_size, model.feature_size)


def test_parameter_counts():
    # conv1 3*6*25+6=456, conv2 6*16*25+16=2416, fc 16*10+10=170
    assert n_params(build_backbone("lenet-gap")) == 3042
    # conv1 20*25+20=520, conv2 20*50*25+50=25050, fc1 800*256+256=205056, fc2 2570
    assert n_params(build_backbone("cdep-cnn", in_channels=1)) == 233196
    # conv1 with 3 input channels: 3*20*25+20=1520
    assert n_params(build_backbone("cdep-cnn", in_channels=3)) == 234196


def test_lenet_gap_shapes_and_features_before_relu():
    torch.manual_seed(0)
    model = build_backbone("lenet-gap")
    assert (model.name, model.input_size, model.has_gap_classifier) == ("lenet-gap", 32, True)
    x = torch.randn(2, 3, 32, 32)
    logits, features = model(x)
    assert logits.shape == (2, 10)
    assert features.shape == (2, 16, 10, 10)
    assert (features < 0).any(), "features must be taken before the ReLU"
    expected = F.max_pool2d(F.relu(features), 2).mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(logits, expected)
    assert model.classifier_weight.shape == (10, 16)
    assert model.classifier_weight is model.fc.weight


def test_cdep_shapes_and_features_after_relu():
    torch.manual_seed(0)
    model = build_backbone("cdep-cnn", num_classes=7, in_channels=1)
    assert (model.name, model.input_size, model.has_gap_classifier) == ("cdep-cnn", 28, False)
    logits, features = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 7)
    assert features.shape == (2, 50, 8, 8)
    assert (features >= 0).all() and (features > 0).any()
    with pytest.raises(L2LError, match="Grad-CAM"):
        model.classifier_weight


@pytest.mark.parametrize(
    "name, shape",
    [("lenet-gap", (1, 3, 28, 28)), ("cdep-cnn", (1, 3, 32, 32)), ("lenet-gap", (1, 1, 32, 32))],
)
def test_wrong_input_shape_names_the_fix(name, shape):
    with pytest.raises(L2LError, match="resize the images"):
        build_backbone(name)(torch.zeros(shape))
