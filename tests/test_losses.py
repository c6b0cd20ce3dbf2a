"""Targets and losses against hand computations and explicit-loop references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learning_to_look.errors import L2LError
from learning_to_look.nn.losses import (
    TARGETS,
    filled_target,
    forward_kl,
    lambda_schedule,
    make_target,
    outline_target,
    reverse_kl,
    rrr_penalty,
)


def test_outline_of_single_pixel_by_hand():
    # Pixel (14,14) -> 7x7 dilation: rows/cols 11..17 -> gradient: the ring 10..18
    # minus the interior 12..16. Nearest 32->10 samples rows floor(3.2 i) =
    # 0,3,6,9,12,16,19,22,25,28, at source rows (j+0.5)*28/32-0.5 =
    # -0.06, 2.56, 5.19, 7.81, 10.44, 13.94, 16.56, 19.19, 21.81, 24.44.
    # Only 10.44 (ring rows 10,11), 13.94 (rows 13,14: ring only at cols 10,11,17,18)
    # and 16.56 (rows 16,17: 0.56 on ring row 17) touch the ring; each such value
    # is >= 1/8, so x8 and clamp make them 1. Centre (13.94, 13.94) is interior.
    ring = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    expected = np.zeros((10, 10))
    expected[4:7, 4:7] = ring
    expected /= 8
    masks = torch.zeros(1, 28, 28)
    masks[0, 14, 14] = 1.0
    out = outline_target(masks)
    assert out.shape == (1, 10, 10)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)


def test_outline_of_empty_mask_is_zero():
    out = outline_target(torch.zeros(2, 28, 28))
    assert torch.equal(out, torch.zeros(2, 10, 10))


def test_outline_threshold_is_strict_on_0_255_scale():
    masks = torch.zeros(2, 28, 28)
    masks[0, 14, 14] = 10 / 255
    masks[1, 14, 14] = 11 / 255
    out = outline_target(masks)
    assert out[0].sum() == 0
    assert out[1].sum() == pytest.approx(1.0)


def np_outline(mask, threshold=10 / 255, size=10):
    """Explicit loops: binarise, 7x7 dilation, 3x3 gradient (out-of-image pixels never
    erode), half-pixel bilinear to 32, x8 clamp, floor-index nearest to 10, normalise."""
    b = (mask > np.float32(threshold)).astype(np.float64)
    n = b.shape[0]

    def window(img, r, reducer):
        out = np.zeros_like(img)
        for i in range(n):
            for j in range(n):
                out[i, j] = reducer(img[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1])
        return out

    d = window(b, 3, np.max)
    grad = window(d, 1, np.max) - window(d, 1, np.min)
    up = np.zeros((32, 32))
    for i in range(32):
        for j in range(32):
            acc = 0.0
            sy, sx = max((i + 0.5) * n / 32 - 0.5, 0.0), max((j + 0.5) * n / 32 - 0.5, 0.0)
            y0, x0 = int(sy), int(sx)
            for yy, wy in ((y0, 1 - (sy - y0)), (min(y0 + 1, n - 1), sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (min(x0 + 1, n - 1), sx - x0)):
                    acc += wy * wx * grad[yy, xx]
            up[i, j] = min(max(acc * 8, 0.0), 1.0)
    idx = [int(math.floor(i * 32 / size)) for i in range(size)]
    small = up[np.ix_(idx, idx)]
    return small / small.sum() if small.sum() > 0 else small


def test_outline_matches_explicit_loops():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 28, 28), dtype=np.float32)
    masks[0, 5:23, 12:15] = rng.uniform(0, 1, (18, 3))  # a stroke with faint pixels
    masks[1, 0:3, 20:28] = 1.0  # touches the border: no erosion from outside
    masks[2] = rng.uniform(0, 1, (28, 28)) > 0.97
    out = outline_target(torch.from_numpy(masks))
    for k in range(3):
        np.testing.assert_allclose(out[k].numpy(), np_outline(masks[k]), atol=1e-6)
        assert out[k].sum().item() == pytest.approx(1.0)


def test_filled_target_by_hand():
    maps = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]])
    # block means [[1, 0], [0, 0.5]], normalised by 1.5
    expected = torch.tensor([[[2 / 3, 0.0], [0.0, 1 / 3]]])
    torch.testing.assert_close(filled_target(maps, size=2), expected)


def test_filled_target_28_to_10_matches_overlapping_windows():
    rng = np.random.default_rng(1)
    maps = rng.uniform(0, 1, (2, 28, 28)).astype(np.float32)
    maps[1] = 0.0
    out = filled_target(torch.from_numpy(maps)).numpy()
    small = np.zeros((10, 10))
    for i in range(10):
        for j in range(10):
            r0, r1 = (i * 28) // 10, -((-(i + 1) * 28) // 10)
            c0, c1 = (j * 28) // 10, -((-(j + 1) * 28) // 10)
            small[i, j] = maps[0, r0:r1, c0:c1].mean()
    np.testing.assert_allclose(out[0], small / small.sum(), rtol=1e-5)
    assert np.array_equal(out[1], np.zeros((10, 10)))


def test_make_target_dispatch_and_unknown_name():
    assert set(TARGETS) == {"outline", "filled"}
    maps = torch.zeros(1, 28, 28)
    maps[0, 14, 14] = 1.0
    torch.testing.assert_close(make_target("filled", maps, size=4), filled_target(maps, size=4))
    torch.testing.assert_close(make_target("outline", maps), outline_target(maps))
    with pytest.raises(L2LError, match="unknown target 'blob'.*outline, filled"):
        make_target("blob", maps)


# Row 0: s = [[1, 0], [0, 0]] so p = [e, 1, 1, 1] / (e + 3); q = [0.5, 0.5, 0, 0].
# KL(q||p) = 0.5 (log 0.5 - 1 + log(e+3)) + 0.5 (log 0.5 + log(e+3)) = log 0.5 + log(e+3) - 0.5.
S = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.3, 0.9], [0.1, 0.0]]], dtype=torch.float64)
Q = torch.tensor([[[0.5, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
FKL0 = math.log(0.5) + math.log(math.e + 3) - 0.5


def test_forward_kl_by_hand_with_empty_target_row():
    assert forward_kl(S[:1], Q[:1]).item() == pytest.approx(FKL0, rel=1e-12)
    # the all-zero row adds 0 but counts in the batch mean
    assert forward_kl(S, Q).item() == pytest.approx(FKL0 / 2, rel=1e-12)
    torch.testing.assert_close(forward_kl(S, Q, reduction="none"), torch.tensor([FKL0, 0.0], dtype=torch.float64))
    spec = F.kl_div(F.log_softmax(S.flatten(1), 1), Q.flatten(1), reduction="batchmean")
    assert forward_kl(S, Q).item() == pytest.approx(spec.item(), rel=1e-12)


# p = [0.1, 0.2, 0.3, 0.4] (s = log p), q uniform.
P4 = [0.1, 0.2, 0.3, 0.4]
S4 = torch.log(torch.tensor([P4], dtype=torch.float64)).view(1, 2, 2)
Q4 = torch.full((1, 2, 2), 0.25, dtype=torch.float64)


def test_forward_and_reverse_kl_differ_as_by_hand():
    reverse = sum(p * math.log(p / 0.25) for p in P4)  # KL(p||q) = 0.106440
    forward = sum(0.25 * math.log(0.25 / p) for p in P4)  # KL(q||p) = 0.121777
    assert reverse_kl(S4, Q4).item() == pytest.approx(reverse, rel=1e-6)
    assert forward_kl(S4, Q4).item() == pytest.approx(forward, rel=1e-12)
    assert reverse == pytest.approx(0.106440, abs=1e-6) and forward == pytest.approx(0.121777, abs=1e-6)


def test_reverse_kl_smoothing_and_empty_row():
    # Row 0: p uniform, q = [0.5, 0.5, 0, 0] smoothed to (q + eps) / (1 + 4 eps).
    eps = 1e-3
    s = torch.zeros(2, 2, 2, dtype=torch.float64)
    z = 1 + 4 * eps
    row0 = 0.5 * (math.log(0.25) - math.log((0.5 + eps) / z)) + 0.5 * (math.log(0.25) - math.log(eps / z))
    out = reverse_kl(s, Q, eps=eps, reduction="none")
    torch.testing.assert_close(out, torch.tensor([row0, 0.0], dtype=torch.float64))
    assert reverse_kl(s, Q, eps=eps).item() == pytest.approx(row0 / 2, rel=1e-12)


def test_kl_losses_have_finite_gradients_with_empty_rows():
    for loss in (forward_kl, reverse_kl):
        s = S.clone().float().requires_grad_(True)
        loss(s, Q.float()).backward()
        assert torch.isfinite(s.grad).all()
        assert s.grad[1].abs().sum() == 0
        assert s.grad[0].abs().sum() > 0


def test_kl_unknown_reduction():
    with pytest.raises(L2LError, match="batchmean, none"):
        forward_kl(S, Q, reduction="mean")


def test_rrr_penalty_by_hand():
    grads = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[-1.0, 0.0], [0.0, 2.0]]]])
    irrelevant = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    # sample 0: 1 + 16 = 17; sample 1: 0 + 4 = 4
    assert rrr_penalty(grads, irrelevant).item() == pytest.approx(10.5)
    assert rrr_penalty(grads, irrelevant, reduction="sum").item() == pytest.approx(21.0)
    assert rrr_penalty(grads, irrelevant.unsqueeze(1)).item() == pytest.approx(10.5)


def test_rrr_mask_applies_to_every_channel_not_across_the_batch():
    # B = C = 2: a (B,H,W) mask must not be aligned with the channel axis.
    grads = torch.ones(2, 2, 2, 2)
    irrelevant = torch.zeros(2, 2, 2)
    irrelevant[0, 0, 0] = 1.0  # one pixel of sample 0 -> 2 channels * 1 = 2; sample 1 -> 0
    assert rrr_penalty(grads, irrelevant, reduction="sum").item() == pytest.approx(2.0)
    assert rrr_penalty(grads * 3, irrelevant).item() == pytest.approx(9.0)


def test_rrr_unknown_reduction():
    with pytest.raises(L2LError, match="mean, sum"):
        rrr_penalty(torch.ones(1, 2, 2), torch.ones(1, 2, 2), reduction="batchmean")


def test_lambda_schedule():
    assert lambda_schedule(0, 11, 160) == 0.0
    assert lambda_schedule(10, 11, 160) == 0.0
    assert lambda_schedule(11, 11, 160) == 160
    assert lambda_schedule(12, 11, 160) == 176
    assert lambda_schedule(29, 11, 160) == 448
    assert [lambda_schedule(t, 11, 160) for t in range(11, 30)] == [160 + 16 * k for k in range(19)]
    assert lambda_schedule(7, 5, 100, ramp=4.0) == 150
