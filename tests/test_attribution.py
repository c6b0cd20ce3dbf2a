"""Attributions against hand computations, and that losses on them reach the weights."""

import math

import pytest
import torch

from learning_to_look.nn.attribution import cam, grad_cam, input_gradients, minmax_normalize
from learning_to_look.errors import L2LError
from learning_to_look.nn.losses import forward_kl, outline_target
from learning_to_look.nn.backbones import build_backbone

# Two samples, two channels, 2x2.
A = torch.tensor(
    [
        [[[1.0, 2.0], [3.0, -4.0]], [[0.0, 1.0], [-1.0, 2.0]]],
        [[[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]]],
    ]
)
W = torch.tensor([[1.0, -2.0], [0.5, 1.0], [9.0, 9.0]])
LABELS = torch.tensor([0, 1])
# sample 0, label 0: 1*A0 - 2*A1 = [[1, 0], [5, -8]] -> ReLU
# sample 1, label 1: 0.5*A0 + 1*A1 = [[2.5, 0], [0, 3]]
CAM = torch.tensor([[[1.0, 0.0], [5.0, 0.0]], [[2.5, 0.0], [0.0, 3.0]]])


def test_cam_by_hand():
    torch.testing.assert_close(cam(A, W, LABELS), CAM)


def test_minmax_per_sample():
    expected = torch.tensor([[[0.2, 0.0], [1.0, 0.0]], [[2.5 / 3, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(minmax_normalize(CAM), expected)


def test_minmax_constant_map_is_zero_not_nan():
    out = minmax_normalize(torch.full((1, 3, 3), 7.0))
    assert torch.equal(out, torch.zeros(1, 3, 3))


def gap_linear_logits(features, weight):
    return features.mean(dim=(2, 3)) @ weight.T + torch.tensor([0.3, -0.1, 2.0])


def test_grad_cam_on_gap_linear_head_is_cam_over_hw():
    # d logit_y / d A_c[i,j] = W[y,c] / (h*w), so alpha = W[y] / 4 here.
    features = A.clone().requires_grad_(True)
    out = grad_cam(features, gap_linear_logits(features, W), LABELS)
    torch.testing.assert_close(out, CAM / 4)


def test_grad_cam_identity_on_random_gap_head():
    torch.manual_seed(0)
    features = torch.randn(4, 6, 3, 5, requires_grad=True)
    weight = torch.randn(3, 6)
    labels = torch.tensor([2, 0, 1, 2])
    out = grad_cam(features, gap_linear_logits(features, weight), labels)
    torch.testing.assert_close(out * 15, cam(features, weight, labels))


def test_grad_cam_on_quadratic_head_by_hand():
    # logit_k = sum_c V[k,c] * mean(A_c^2): d/dA_c = V[y,c] * 2 A_c / 4, so
    # alpha_c = V[y,c] * 2 * mean(A_c) / 4. Sample 0 with V[y] = [1, 1]:
    # mean(A0) = 0.5, mean(A1) = 0.5 -> alpha = [0.25, 0.25]
    # map = ReLU(0.25*A0 + 0.25*A1) = [[0.25, 0.75], [0.5, 0]].
    features = A[:1].clone().requires_grad_(True)
    v = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    logits = (features**2).mean(dim=(2, 3)) @ v.T
    out = grad_cam(features, logits, torch.tensor([0]))
    torch.testing.assert_close(out, torch.tensor([[[0.25, 0.75], [0.5, 0.0]]]))


def test_grad_cam_needs_graph():
    with torch.no_grad():
        features = A.clone()
        logits = gap_linear_logits(features, W)
    with pytest.raises(ValueError, match="no_grad"):
        grad_cam(features, logits, LABELS)


def lenet_batch():
    torch.manual_seed(0)
    model = build_backbone("lenet-gap")
    x = torch.randn(3, 3, 32, 32)
    masks = torch.zeros(3, 28, 28)
    masks[:, 8:20, 10:18] = 1.0
    return model, x, torch.tensor([1, 4, 7]), outline_target(masks)


def grads_of(model):
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
def test_alignment_loss_reaches_every_layer(method):
    model, x, labels, target = lenet_batch()
    logits, features = model(x)
    if method == "cam":
        raw = cam(features, model.classifier_weight, labels)
    else:
        raw = grad_cam(features, logits, labels)
    forward_kl(minmax_normalize(raw), target).backward()
    for name, grad in grads_of(model).items():
        if name == "fc.bias":
            continue  # the bias moves neither CAM nor Grad-CAM
        assert grad is not None and grad.abs().sum() > 0, name


def test_grad_cam_without_create_graph_does_not_reach_classifier():
    model, x, labels, target = lenet_batch()
    logits, features = model(x)
    forward_kl(minmax_normalize(grad_cam(features, logits, labels, create_graph=False)), target).backward()
    assert model.fc.weight.grad is None
    assert model.conv2.weight.grad.abs().sum() > 0


def test_grad_cam_keeps_logits_graph_for_cross_entropy():
    model, x, labels, target = lenet_batch()
    logits, features = model(x)
    attn = forward_kl(minmax_normalize(grad_cam(features, logits, labels)), target)
    (torch.nn.functional.cross_entropy(logits, labels) + attn).backward()
    assert model.fc.bias.grad.abs().sum() > 0


# Linear model logits = x @ M.T on 2 pixels, 2 classes.
M = torch.eye(2)
LN3 = math.log(3.0)
X = torch.tensor([[LN3, 0.0], [0.0, LN3]])


def test_input_gradients_sum_log_prob_by_hand():
    # d/dx sum_k log p_k = sum_k M_k - K * sum_j p_j M_j.
    # Sample 0: p = [0.75, 0.25] -> [1, 1] - 2 * [0.75, 0.25] = [-0.5, 0.5].
    x = X.clone().requires_grad_(True)
    out = input_gradients(x @ M.T, x)
    torch.testing.assert_close(out, torch.tensor([[-0.5, 0.5], [0.5, -0.5]]))


def test_input_gradients_true_logit_by_hand():
    x = X.clone().requires_grad_(True)
    m = torch.tensor([[1.0, 2.0], [-3.0, 4.0]])
    out = input_gradients(x @ m.T, x, target="true-logit", labels=torch.tensor([1, 0]))
    torch.testing.assert_close(out, torch.tensor([[-3.0, 4.0], [1.0, 2.0]]))


def test_input_gradients_match_per_sample_autograd_on_images():
    torch.manual_seed(1)
    model = build_backbone("lenet-gap")
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    batch = input_gradients(model(x)[0], x, create_graph=False)
    for i in range(3):
        xi = x[i : i + 1].detach().requires_grad_(True)
        (gi,) = torch.autograd.grad(torch.log_softmax(model(xi)[0], 1).sum(), xi)
        torch.testing.assert_close(batch[i : i + 1], gi)


def test_input_gradient_penalty_reaches_weights():
    m = torch.tensor([[1.0, 2.0], [-3.0, 4.0]], requires_grad=True)
    x = X.clone().requires_grad_(True)
    input_gradients(x @ m.T, x).pow(2).sum().backward()
    assert m.grad is not None and m.grad.abs().sum() > 0


def test_input_gradients_bad_arguments():
    x = X.clone().requires_grad_(True)
    with pytest.raises(L2LError, match="sum-log-prob, true-logit"):
        input_gradients(x @ M.T, x, target="logit")
    with pytest.raises(ValueError, match="labels"):
        input_gradients(x @ M.T, x, target="true-logit")
