"""The stacked trainer (PROTOCOL 3.7) against the single-run engine it must reproduce."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.methods import METHODS, Batch
from learning_to_look.training.resolve import resolve, resolve_run
from learning_to_look.nn.backbones import LeNetGAP
from learning_to_look.training import stacked as stacked_mod
from learning_to_look.training.stacked import (NoModel, StackedLeNetGAP, StackedSGD, check_stack, epoch_schedule,
                                               fit_stacked)
from learning_to_look.training.engine import _optimizer, fit

N_TRAIN, N_VAL = 96, 40


def synthetic(cfg: TrainConfig, n: int, seed: int) -> Batch:
    """Random grey images, labels and blob maps: enough to exercise every loss term."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    maps = torch.zeros(n, 28, 28)
    for i in range(n):
        r, c = torch.randint(4, 18, (2,), generator=g).tolist()
        maps[i, r:r + 8, c:c + 6] = 1.0
    method = METHODS.get(cfg.method)(cfg)
    return Batch(x, y, method.aux(maps, LeNetGAP))


def configs(**common) -> list[TrainConfig]:
    """Three l2l models that differ in lambda0, learning rate and phase-1 mode. The weight
    decay is exaggerated so that decaying the fc bias in the attention-only phase, which
    the single-run engine does not do, shows above the tolerance."""
    base = dict(dataset="decoymnist", method="l2l", epochs=2, e_att=1, lambda0=1.0, seed=0, batch_size=32,
                weight_decay=1.0) | common
    variants = [{}, {"lambda0": 2.0, "lr": 2e-3}, {"phase1": "ce"}]
    return [resolve(TrainConfig(**(base | v))) for v in variants]


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def test_stacked_matches_separate_single_runs():
    cfgs = configs()
    train, val = synthetic(cfgs[0], N_TRAIN, 1), synthetic(cfgs[0], N_VAL, 2)
    stacked = fit_stacked(cfgs, train, val, progress=False)
    for cfg, got in zip(cfgs, stacked):
        single = fit(resolve_run(cfg), train, val, progress=False)
        assert max_rel_diff(got.model.state_dict(), single.model.state_dict()) < 1e-4
        assert got.selected_epoch == single.selected_epoch
        for mine, ref in zip(got.history, single.history):
            assert (mine["phase"], mine["lambda"], mine["lr"]) == (ref["phase"], ref["lambda"], ref["lr"])
            assert mine["val_acc"] == pytest.approx(ref["val_acc"], abs=1e-6)
            assert mine["val_kl"] == pytest.approx(ref["val_kl"], rel=1e-4)


def test_a_model_does_not_depend_on_its_stack_mates():
    cfgs = configs()
    train, val = synthetic(cfgs[0], N_TRAIN, 1), synthetic(cfgs[0], N_VAL, 2)
    alone = fit_stacked(cfgs[1:2], train, val, progress=False)[0]
    together = fit_stacked(cfgs, train, val, progress=False)[1]
    assert max_rel_diff(alone.model.state_dict(), together.model.state_dict()) < 1e-5


def _nan_for_model_0_from_step(step, monkeypatch):
    """Model 0's loss becomes NaN from the ``step``-th training step on (3 steps an epoch)."""
    real, calls = stacked_mod._per_model_loss, []

    def per_model_loss(stack, batch, ce_w, attn_w):
        loss, hits = real(stack, batch, ce_w, attn_w)  # (M,), (M,)
        calls.append(1)
        poison = torch.ones_like(loss)
        poison[0] = float("nan") if len(calls) > step else 1.0
        return loss * poison, hits

    monkeypatch.setattr(stacked_mod, "_per_model_loss", per_model_loss)


def test_a_diverging_model_stops_alone_as_a_single_run_would(monkeypatch):
    cfgs = [resolve(TrainConfig(dataset="decoymnist", method="vanilla", epochs=3, seed=0, batch_size=32, lr=lr))
            for lr in (1e-3, 2e-3)]
    train, val = synthetic(cfgs[0], N_TRAIN, 1), synthetic(cfgs[0], N_VAL, 2)
    alone = fit_stacked(cfgs[1:], train, val, progress=False)[0]
    _nan_for_model_0_from_step(4, monkeypatch)  # in epoch 1
    hit, mate = fit_stacked(cfgs, train, val, progress=False)
    assert "NaN in epoch 1" in hit.stopped and len(hit.history) == 1 and hit.selected_epoch == 0
    assert all(torch.isfinite(v).all() for v in hit.model.state_dict().values())
    assert mate.stopped is None and len(mate.history) == 3
    assert max_rel_diff(mate.model.state_dict(), alone.model.state_dict()) < 1e-5
    _nan_for_model_0_from_step(0, monkeypatch)  # in epoch 0: nothing to select, and the mate trains on
    lost, mate = fit_stacked(cfgs, train, val, progress=False)
    assert isinstance(lost, NoModel) and "lr 0.001" in lost.reason and "NaN in epoch 0" in lost.reason
    assert max_rel_diff(mate.model.state_dict(), alone.model.state_dict()) < 1e-5


def test_schedule_per_epoch_matches_the_single_run_optimiser():
    """Phase, lambda and learning rate of every epoch of a 30-epoch run, against torch's
    own SGD + StepLR rebuilt at each restart as the single-run engine does."""
    for cfg in (resolve(TrainConfig(method="l2l", e_att=11)), resolve(TrainConfig(method="l2l", e_att=3, phase1="ce")),
                resolve(TrainConfig(method="vanilla"))):
        method = METHODS.get(cfg.method)(cfg)
        model = LeNetGAP()
        opt, sched = _optimizer(model, cfg)
        for epoch in range(cfg.epochs):
            if method.resets_optimizer(epoch):
                opt, sched = _optimizer(model, cfg)
            got = epoch_schedule(method, epoch)
            assert got.lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (cfg.method, epoch)
            assert (got.phase, got.eligible, got.restart) == (method.phase(epoch), method.eligible(epoch),
                                                             method.resets_optimizer(epoch))
            ce, attn = got.ce_weight, got.attention_weight
            assert (ce, attn) == {"ce": (1.0, 0.0), "attention": (0.0, 1.0),
                                  "joint": (1.0, method.lam(epoch))}[got.phase]
            opt.step()
            sched.step()
    assert [epoch_schedule(METHODS.get("l2l")(resolve(TrainConfig(method="l2l"))), e).lr
            for e in (0, 7, 11, 18, 25)] == pytest.approx([1e-3, 1e-4, 1e-3, 1e-4, 1e-5])


def test_stacked_sgd_by_hand():
    """Two models of one scalar each: weight decay, first-step buffer, momentum, per-model
    learning rate, a skipped model and a restart, computed by hand."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = StackedSGD({"p": p}, momentum=0.5, weight_decay=0.1)
    both, first = torch.tensor([True, True]), torch.tensor([True, False])
    p.grad = torch.tensor([1.0, 1.0])
    opt.step(torch.tensor([0.1, 0.2]), {"p": both})  # d = 1 + 0.1 p = 1.1, 1.2; buf = d
    assert p.tolist() == pytest.approx([1.0 - 0.11, 2.0 - 0.24])
    p.grad = torch.tensor([0.0, 5.0])
    opt.step(torch.tensor([0.1, 0.2]), {"p": first})  # model 1 skipped entirely
    d0 = 0.1 * 0.89
    assert p.tolist() == pytest.approx([0.89 - 0.1 * (0.5 * 1.1 + d0), 1.76])
    opt.restart(torch.tensor([True, False]))
    p.grad = torch.tensor([0.0, 0.0])
    before = p.detach().clone()
    opt.step(torch.tensor([1.0, 1.0]), {"p": both})  # model 0 restarted: buf = d only
    assert p[0].item() == pytest.approx(before[0].item() * (1 - 0.1))
    assert p[1].item() == pytest.approx(before[1].item() - (0.5 * 1.2 + 0.1 * 1.76))


def test_forward_is_the_single_models_forward():
    torch.manual_seed(0)
    models = [LeNetGAP() for _ in range(3)]
    stack = StackedLeNetGAP(models)
    x = torch.rand(4, 3, 32, 32)
    logits, feats = stack(x)
    for i, m in enumerate(models):
        ref_logits, ref_feats = m(x)
        torch.testing.assert_close(logits[:, i], ref_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(feats[:, i], ref_feats, rtol=1e-5, atol=1e-6)
        assert max_rel_diff(stack.single(i).state_dict(), m.state_dict()) == 0


def test_accuracy_is_each_models_accuracy_whatever_the_batch():
    torch.manual_seed(0)
    models = [LeNetGAP() for _ in range(3)]
    x, y = torch.rand(50, 3, 32, 32), torch.randint(0, 10, (50,))  # (N,3,S,S), (N,)
    by_hand = torch.stack([(m(x)[0].argmax(1) == y).float().mean() * 100 for m in models])  # (M,)
    stack = StackedLeNetGAP(models)
    for bs in (7, 64, 1000):
        torch.testing.assert_close(stack.accuracy(x, y, bs=bs), by_hand)


def test_stacks_that_cannot_be_built_are_refused():
    cfgs = configs()
    with pytest.raises(L2LError, match="differ too: dataset"):
        check_stack([cfgs[0], dataclasses.replace(cfgs[1], dataset="colormnist")])
    with pytest.raises(L2LError, match="cannot be stacked"):
        check_stack([resolve(TrainConfig(method="rrr"))])
    with pytest.raises(L2LError, match="schedule paper"):
        check_stack([resolve(TrainConfig(method="l2l", schedule="adam"))])
    with pytest.raises(L2LError, match="l2l train for --selection val_worst_group"):
        check_stack([resolve(TrainConfig(dataset="shapes-bg", method="vanilla", selection="val_worst_group"))])
    with pytest.raises(L2LError, match="lenet-gap, not cdep-cnn"):
        check_stack([resolve(TrainConfig(method="vanilla", backbone="cdep-cnn"))])
    with pytest.raises(L2LError, match="pass data_seed"):
        fit_stacked([cfgs[0], dataclasses.replace(cfgs[1], seed=1)], None, None, progress=False)
