"""Many small models trained as one network (PROTOCOL 3.7).

A sweep over lambda0, E_att or the learning rate trains dozens of LeNet-GAPs of about
3k parameters each. One at a time, the single-run engine is bound by per-step
overhead, not arithmetic; stacked, M models cost one forward and one backward pass
per batch. Every model keeps its own schedule: phases, lambda ramp, StepLR, momentum
reset at its own E_att and the fc-bias rule of the attention-only phase. The schedule
itself comes from each model's :class:`~learning_to_look.methods.Method`, the same
object the single-run engine asks, so the two engines cannot disagree about it.

All models of a stack share one batch stream (shuffled by ``data_seed``) and one data
set, map source and batch size; with one seed for the whole stack each model is the
run ``l2l train`` would give for its config, up to float rounding (which l2l's
chaotic joint phase can grow; PROTOCOL 3.7).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..nn.attribution import minmax_normalize
from ..config import TrainConfig
from ..data import DATASETS
from ..data.pipeline import as_rgb, batch_indices
from ..errors import L2LError, corrupt_file
from ..io import atomic_torch_save
from ..nn.losses import forward_kl, kl_per_image, reverse_kl
from ..methods import METHODS, Batch, Method
from ..nn.backbones import LeNetGAP, build_backbone
from ..registry import Registry
from .engine import FitResult, set_determinism, stopped_note
from .checkpoints import load_checkpoint, save_checkpoint
from .selection import (check_selection_state, chosen, keep_if_best, no_selection, scored, selection_note,
                        unselected)
from ..device import pick_device

#: Images x models in one validation batch: about 1 GB of activations, whatever M is.
VAL_IMAGE_MODELS = 32_000
#: Training memory per model of a stack at batch 32 (activations kept for backward,
#: parameters, momentum), rounded up; what ``--max-stack`` is checked against.
BYTES_PER_MODEL = 8 * 2**20
#: Memory a stack needs besides its models: validation batches, data, the framework.
BYTES_FIXED = 2 * 2**30

#: Config fields a model may set for itself; every other field must agree across a stack.
PER_MODEL_FIELDS = ("lambda0", "e_att", "lr", "phase1", "seed")


class StackedLeNetGAP(nn.Module):
    """M LeNet-GAPs (PROTOCOL 3.1) as one network: parameters carry a leading model
    dimension; conv1 is one convolution with M*6 filters, conv2 a grouped convolution
    (groups = M) and the head an einsum."""

    backbone: ClassVar[type[LeNetGAP]] = LeNetGAP
    #: Parameters that only the cross-entropy reaches (CAM uses the fc weight, not its
    #: bias): a model whose loss has no CE term leaves them untouched that step.
    ce_only = ("fc_b",)

    def __init__(self, models: Sequence[LeNetGAP]) -> None:
        super().__init__()
        self.m = len(models)
        self.num_classes = models[0].num_classes

        def stack(get: Callable[[LeNetGAP], Tensor]) -> nn.Parameter:
            return nn.Parameter(torch.stack([get(m).detach().clone() for m in models]))

        self.conv1_w, self.conv1_b = stack(lambda m: m.conv1.weight), stack(lambda m: m.conv1.bias)
        self.conv2_w, self.conv2_b = stack(lambda m: m.conv2.weight), stack(lambda m: m.conv2.bias)
        self.fc_w, self.fc_b = stack(lambda m: m.fc.weight), stack(lambda m: m.fc.bias)

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "StackedLeNetGAP":
        """The stack a saved ``state_dict`` came from (its sizes read off the tensors)."""
        m, _, in_channels = state["conv1_w"].shape[:3]
        stack = cls([cls.backbone(num_classes=state["fc_w"].shape[1], in_channels=in_channels) for _ in range(m)])
        stack.load_state_dict(state)
        return stack

    @torch.no_grad()
    def accuracy(self, x: Tensor, y: Tensor, bs: int = 64) -> Tensor:
        """Accuracy % of every model (M,) on inputs ``x`` (N,C,H,W) with labels ``y`` (N,).
        Small batches keep the (B,M*6,28,28) activations in cache: on one CPU thread, 64
        images ran 1.3-1.7x faster than 1000 (benchmarks/bound_batch.py)."""
        self.eval()
        device = self.conv1_w.device
        correct = torch.zeros(self.m, device=device)  # (M,)
        for i in range(0, len(y), bs):
            logits, _ = self(as_rgb(x[i:i + bs].to(device)))  # (B,M,K)
            correct += (logits.argmax(2) == y[i:i + bs, None].to(device)).sum(0)
        return 100.0 * correct.cpu() / len(y)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B,M,K), features (B,M,C,h,w))``: conv2 before its ReLU, as CAM wants."""
        b, m = x.shape[0], self.m
        h = F.conv2d(x, self.conv1_w.flatten(0, 1), self.conv1_b.flatten())  # (B,M*6,28,28)
        h = F.max_pool2d(F.relu(h), 2)  # (B,M*6,14,14)
        feats = F.conv2d(h, self.conv2_w.flatten(0, 1), self.conv2_b.flatten(), groups=m)  # (B,M*16,10,10)
        pooled = F.max_pool2d(F.relu(feats), 2).mean(dim=(2, 3)).view(b, m, -1)  # (B,M,16)
        logits = torch.einsum("bmc,mkc->bmk", pooled, self.fc_w) + self.fc_b  # (B,M,K)
        return logits, feats.view(b, m, -1, *feats.shape[2:])

    def cam(self, feats: Tensor, labels: Tensor) -> Tensor:
        """Min-max normalised CAM (B,M,h,w) of each sample's label in each model (PROTOCOL 3.2)."""
        weight = self.fc_w[:, labels]  # (M,B,C)
        raw = F.relu(torch.einsum("mbc,bmchw->bmhw", weight, feats))  # (B,M,h,w)
        return minmax_normalize(raw.flatten(0, 1)).view_as(raw)

    def single(self, i: int) -> LeNetGAP:
        """Model ``i`` as an ordinary LeNet-GAP (for saving, testing and reports)."""
        model = self.backbone(num_classes=self.num_classes, in_channels=self.conv1_w.shape[2])
        model.load_state_dict(self.single_state(i))
        return model

    def single_state(self, i: int) -> dict[str, Tensor]:
        return {"conv1.weight": self.conv1_w[i], "conv1.bias": self.conv1_b[i], "conv2.weight": self.conv2_w[i],
                "conv2.bias": self.conv2_b[i], "fc.weight": self.fc_w[i], "fc.bias": self.fc_b[i]}


STACKED: Registry[type[StackedLeNetGAP]] = Registry("stacked backbone")
STACKED.add(LeNetGAP.name, StackedLeNetGAP)


class StackedSGD:
    """``torch.optim.SGD`` (momentum, weight decay, no dampening) with a learning rate per
    model, momentum buffers a model can clear alone, and per-model updates that can be
    skipped: ``d = g + wd*p``; ``buf = d`` on a model's first step since its (re)start,
    else ``buf = momentum*buf + d``; ``p -= lr*buf`` (PROTOCOL 3.7)."""

    def __init__(self, params: dict[str, nn.Parameter], momentum: float, weight_decay: float) -> None:
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        m = next(iter(params.values())).shape[0]
        self.buf = {k: torch.zeros_like(p) for k, p in params.items()}
        self.started = {k: torch.zeros(m, dtype=torch.bool, device=p.device) for k, p in params.items()}

    def restart(self, models: Tensor) -> None:
        """Forget the momentum of ``models`` (bool (M,)), as a freshly built optimiser would."""
        for started in self.started.values():
            started &= ~models.to(started.device)

    @torch.no_grad()
    def step(self, lr: Tensor, active: dict[str, Tensor]) -> None:
        """One update with per-model ``lr`` (M,); ``active[name]`` (bool (M,)) says which
        models' slices of that parameter had a gradient in their own loss."""
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.ndim - 1)
            on, fresh = active[name].view(shape), ~self.started[name].view(shape)
            d = p.grad + self.weight_decay * p
            buf = torch.where(fresh, d, self.buf[name] * self.momentum + d)
            self.buf[name] = torch.where(on, buf, self.buf[name])
            p.sub_(torch.where(on, lr.view(shape) * buf, torch.zeros_like(p)))
            self.started[name] |= active[name]

    def state_dict(self) -> dict[str, Any]:
        return {"buf": self.buf, "started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buf, self.started = dict(state["buf"]), dict(state["started"])


@dataclass
class ModelSchedule:
    """What one model does in one epoch, asked of its own method object."""

    phase: str
    ce_weight: float
    attention_weight: float
    lr: float
    restart: bool
    eligible: bool


def epoch_schedule(method: Method, epoch: int) -> ModelSchedule:
    """The epoch as the single-run engine runs it: StepLR counted from the last start or
    restart, the method's phase and loss weights."""
    cfg = method.cfg
    start = max((e for e in range(epoch + 1) if method.resets_optimizer(e)), default=0)
    ce, attn = method.loss_weights(epoch)
    return ModelSchedule(method.phase(epoch), ce, attn, cfg.lr * cfg.gamma ** ((epoch - start) // cfg.step_size),
                         method.resets_optimizer(epoch), method.eligible(epoch))


def check_stack(cfgs: Sequence[TrainConfig]) -> None:
    """Raise unless the resolved ``cfgs`` can share one stack."""
    if not cfgs:
        raise L2LError("a stack needs at least one model")
    first = cfgs[0]
    if first.backbone not in STACKED.names():
        raise L2LError(f"stacked training exists for {', '.join(STACKED.names())}, not {first.backbone}; "
                       "train this backbone with l2l train")
    if not METHODS.get(first.method).stackable:
        stackable = [n for n in METHODS.names() if METHODS.get(n).stackable]
        raise L2LError(f"method {first.method} cannot be stacked; stackable methods: {', '.join(stackable)}")
    if first.momentum is None or first.step_size is None:
        raise L2LError(f"stacked training follows the SGD + StepLR schedule; got --schedule {first.schedule}, "
                       "use --schedule paper")
    own = STACKED.get(first.backbone).backbone.input_size
    if first.network_size not in (None, own):
        raise L2LError(f"stacked training takes {first.backbone}'s own {own} px inputs, not --network-size "
                       f"{first.network_size}; train it with l2l train")
    if first.selection in ("val_worst_group", "val_balanced"):
        raise L2LError(f"stacked training validates accuracy and attention only, not per group or class; train "
                       f"with l2l train for --selection {first.selection}, or select on val_acc")
    if first.freeze_until:
        raise L2LError("stacked training has no frozen-backbone mode; train with l2l train for --freeze-until")
    if first.precision != "fp32" or first.compile:
        raise L2LError("stacked training runs its own fp32 kernels; drop --precision and --compile, or train "
                       "with l2l train")
    shared = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in PER_MODEL_FIELDS]
    for cfg in cfgs[1:]:
        differ = [k for k in shared if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise L2LError(f"models of one stack may differ only in {', '.join(PER_MODEL_FIELDS)}; "
                           f"these differ too: {', '.join(differ)}")


def _initial_models(cfgs: Sequence[TrainConfig]) -> list[LeNetGAP]:
    """Each model initialised exactly as its single run would be (seeded, then built)."""
    models = []
    for cfg in cfgs:
        set_determinism(cfg.seed)
        models.append(build_backbone(cfg.backbone, DATASETS.get(cfg.dataset).num_classes))
    return models


def _per_model_loss(stack: StackedLeNetGAP, batch: Batch, ce_w: Tensor, attn_w: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """(loss per model (M,), correct predictions per model (M,)) with per-model loss
    weights ``ce_w`` and ``attn_w`` (M,) (``attn_w`` None: no model aligns this epoch);
    each model's term depends on its own parameters only, so one backward pass of their
    sum gives every model its own gradient."""
    logits, feats = stack(batch.x)  # (B,M,K), (B,M,C,h,w)
    b, m, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * m, k), batch.y.repeat_interleave(m), reduction="none")  # (B*M,)
    loss = ce.view(b, m).mean(0) * ce_w  # (M,)
    if attn_w is not None:
        s = stack.cam(feats, batch.y)  # (B,M,h,w)
        target = batch.aux["target"].repeat_interleave(m, dim=0)  # (B*M,h,w)
        kl = forward_kl(s.flatten(0, 1), target, reduction="none").view(b, m).sum(0) / b  # (M,) batchmean each
        loss = loss + kl * attn_w
    return loss, (logits.argmax(2) == batch.y[:, None]).sum(0)


@torch.no_grad()
def _validate(stack: StackedLeNetGAP, val: Batch, device: torch.device) -> list[dict[str, float]]:
    """Per model: validation accuracy and, with a target, the nan-mean KL and reverse KL
    of its CAM to the target (what the single-run engine logs)."""
    stack.eval()
    bs = min(1000, max(32, VAL_IMAGE_MODELS // stack.m))  # bounded activations however large the stack
    correct = torch.zeros(stack.m)
    per_image: dict[str, list[Tensor]] = {}
    for idx in batch_indices(len(val), bs, shuffle=False):
        b = val.take(idx, device)
        logits, feats = stack(b.x)  # (B,M,K), (B,M,C,h,w)
        correct += (logits.argmax(2) == b.y[:, None]).sum(0).cpu()
        if "target" in b.aux:
            s = stack.cam(feats, b.y).float()  # (B,M,h,w)
            q = b.aux["target"].float()[:, None].expand_as(s)  # (B,M,h,w)
            per_image.setdefault("kl", []).append(
                kl_per_image(s.flatten(0, 1), q.flatten(0, 1)).view(s.shape[:2]).cpu())
            per_image.setdefault("rkl", []).append(
                reverse_kl(s.flatten(0, 1), q.flatten(0, 1), reduction="none").view(s.shape[:2]).cpu())
    joined = {k: torch.cat(v) for k, v in per_image.items()}  # (N,M) each
    return [{"val_acc": 100.0 * float(correct[i]) / len(val)}
            | {f"val_{k}": float(torch.nanmean(v[:, i])) for k, v in joined.items()} for i in range(stack.m)]


@dataclass
class _Ledger:
    """What the stack knows of each of its M models: its history rows, its best eligible
    epoch on validation (with that epoch's weights) and why it stopped (None: training)."""

    histories: list[list[dict[str, Any]]]
    best: list[dict[str, Any]]
    stopped: list[str | None]

    @classmethod
    def empty(cls, cfgs: Sequence[TrainConfig]) -> _Ledger:
        return cls([[] for _ in cfgs], [unselected(c.selection) for c in cfgs], [None] * len(cfgs))

    def state(self) -> dict[str, Any]:
        return {"histories": self.histories, "best": self.best, "stopped": self.stopped}

    def record(self, epoch: int, stack: StackedLeNetGAP, cfgs: Sequence[TrainConfig], methods: Sequence[Method],
               sched: Sequence[ModelSchedule], rows: list[dict[str, float]], train_acc: list[float],
               seconds: float) -> None:
        """Add each training model's row for ``epoch`` and keep its weights when its
        validation score is its best so far (eligible epochs only)."""
        for i, (cfg, s, row) in enumerate(zip(cfgs, sched, rows)):
            if self.stopped[i] is not None:
                continue
            row = scored(cfg, {"epoch": epoch, "phase": s.phase, "lambda": methods[i].lam(epoch), "lr": s.lr,
                               "train_acc": train_acc[i]} | row, s.eligible)
            self.histories[i].append(row | {"seconds": seconds / len(cfgs)})
            self.best[i] = keep_if_best(self.best[i], row, stack.single_state(i))

    def stop_diverged(self, finite: list[bool], epoch: int) -> None:
        """Stop each model whose loss diverged in ``epoch``, as the single-run engine stops
        a run: it trains no more, and its epoch is selected from the whole epochs before.
        A model with no epoch to select yet ends with no model (:class:`NoModel`); its
        mates train on."""
        for i, ok in enumerate(finite):
            if ok or self.stopped[i] is not None:
                continue
            why = f"loss became NaN in epoch {epoch}"
            has_model = chosen(self.best[i])[1]["state"] is not None
            self.stopped[i] = stopped_note(why, epoch) if has_model else f"{why}, before any epoch it could select"


@dataclass
class NoModel:
    """A stacked model whose loss diverged before it had an epoch to select: no run to
    record. Its grid point cannot be chosen (the sweep says so), and no stack mate is lost."""

    reason: str
    history: list[dict[str, Any]]


def fit_stacked(cfgs: Sequence[TrainConfig], train: Batch, val: Batch, *, data_seed: int | None = None,
                checkpoint: Path | None = None, epoch_weights: Path | None = None, progress: bool = True,
                on_epoch: Callable[[int], None] | None = None) -> list[FitResult | NoModel]:
    """Train the resolved ``cfgs`` as one stack on ``train`` and select each model's epoch
    on ``val`` alone; no test data comes in. ``data_seed`` (default: the models' common
    seed) shuffles the shared batch stream. With ``checkpoint`` the whole state is
    written atomically after every epoch, and a stack found there resumes. With
    ``epoch_weights`` every epoch's weights (3k numbers a model) and which models could
    be selected then go to ``epoch_weights/epochNNN.pt``, for the optimistic bound of
    PROTOCOL 3.8, computed only after all selection."""
    check_stack(cfgs)
    seeds = {c.seed for c in cfgs}
    if data_seed is None and len(seeds) > 1:
        raise L2LError("models with different seeds share one batch stream: pass data_seed")
    data_seed = seeds.pop() if data_seed is None else data_seed
    started = time.perf_counter()
    device = pick_device(cfgs[0].device)
    methods = [METHODS.get(c.method)(c) for c in cfgs]
    stack = StackedLeNetGAP(_initial_models(cfgs)).to(device)
    train, val = train.to(device), val.to(device)
    opt = StackedSGD(dict(stack.named_parameters()), cfgs[0].momentum, cfgs[0].weight_decay)
    shuffle = torch.Generator().manual_seed(data_seed)
    ledger, start, prior = _Ledger.empty(cfgs), 0, 0.0
    if checkpoint is not None and (resumed := _resume(checkpoint, cfgs, stack, opt, shuffle, data_seed)) is not None:
        ledger, start, prior = resumed
    epochs = cfgs[0].epochs
    bar = tqdm(total=epochs * len(cfgs), initial=start * len(cfgs), unit="model-epoch", desc=f"stack of {len(cfgs)}",
               disable=not progress, dynamic_ncols=True)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        sched = [epoch_schedule(m, epoch) for m in methods]
        opt.restart(torch.tensor([s.restart for s in sched]))
        frozen = torch.tensor([why is not None for why in ledger.stopped], device=device)  # (M,)
        train_acc, finite = _train_epoch(stack, opt, train, sched, shuffle, cfgs[0].batch_size, device, frozen)
        rows = _validate(stack, val, device)
        ledger.stop_diverged(finite, epoch)
        ledger.record(epoch, stack, cfgs, methods, sched, rows, train_acc, time.perf_counter() - t0)
        if epoch_weights is not None:
            atomic_torch_save(epoch_weights / f"epoch{epoch:03d}.pt",
                              {"stack": {k: v.detach().cpu() for k, v in stack.state_dict().items()},
                               "eligible": [s.eligible and why is None for s, why in zip(sched, ledger.stopped)]})
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"configs": [c.to_dict() for c in cfgs], "data_seed": data_seed,
                                         "epoch": epoch, "stack": stack.state_dict(), "optimizer": opt.state_dict(),
                                         "shuffle": shuffle.get_state(), **ledger.state(),
                                         "wall_seconds": prior + time.perf_counter() - started})
        bar.update(len(cfgs))
        if on_epoch is not None:
            on_epoch(epoch)
    bar.close()
    return [_fitted(stack, b, h, prior, c, why)
            for b, h, c, why in zip(ledger.best, ledger.histories, cfgs, ledger.stopped)]


def _train_epoch(stack: StackedLeNetGAP, opt: StackedSGD, train: Batch, sched: Sequence[ModelSchedule],
                 shuffle: torch.Generator, batch_size: int, device: torch.device,
                 frozen: Tensor) -> tuple[list[float], list[bool]]:
    """One pass over the shared batch stream, updating no ``frozen`` (M,) model; returns
    each model's training accuracy % and whether its loss stayed finite."""
    stack.train()
    lr = torch.tensor([s.lr for s in sched], device=device)  # (M,)
    with_ce = torch.tensor([s.ce_weight > 0 for s in sched], device=device)  # (M,)
    ce_w = torch.tensor([s.ce_weight for s in sched], device=device)  # (M,)
    aligns = any(s.attention_weight > 0 for s in sched)
    attn_w = torch.tensor([s.attention_weight for s in sched], device=device) if aligns else None  # (M,)
    active = {name: (with_ce if name in stack.ce_only else torch.ones_like(with_ce)) & ~frozen for name in opt.params}
    correct = torch.zeros(stack.m, dtype=torch.long, device=device)  # (M,)
    finite = torch.ones(stack.m, dtype=torch.bool, device=device)  # (M,) read once per epoch: no per-step host sync
    for idx in batch_indices(len(train), batch_size, shuffle):
        loss, hits = _per_model_loss(stack, train.take(idx, device), ce_w, attn_w)  # (M,), (M,)
        finite &= torch.isfinite(loss.detach())
        for p in opt.params.values():
            p.grad = None
        loss.sum().backward()
        opt.step(lr, active)
        correct += hits
    return [100.0 * float(c) / len(train) for c in correct.cpu()], finite.cpu().tolist()


def _fitted(stack: StackedLeNetGAP, sel: dict[str, Any], history: list[dict[str, Any]], prior: float,
            cfg: TrainConfig, stopped: str | None) -> FitResult | NoModel:
    rule, best = chosen(sel)
    if best["state"] is None and stopped is not None:
        point = ", ".join(f"{k} {getattr(cfg, k)}" for k in PER_MODEL_FIELDS)
        return NoModel(f"the model with {point}: {stopped}; lower --lr or --lambda0 to train it", history)
    if best["state"] is None:
        raise L2LError(no_selection(cfg, history))
    model = stack.backbone(num_classes=stack.num_classes, in_channels=stack.conv1_w.shape[2])
    model.load_state_dict(best["state"])
    return FitResult(model.to(stack.conv1_w.device), history, best["epoch"], best["score"], prior, stopped, rule,
                     selection_note(sel, cfg.selection_beta))


def _is_stack_state(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or not {"stack", "optimizer", "shuffle", "histories", "best"} <= set(state):
        raise corrupt_file(path, "not a stacked-training checkpoint")
    for sel in state["best"]:
        check_selection_state(sel, path)


def _resume(checkpoint: Path, cfgs: Sequence[TrainConfig], stack: StackedLeNetGAP, opt: StackedSGD,
            shuffle: torch.Generator, data_seed: int) -> tuple[_Ledger, int, float] | None:
    """Load the state saved after the last good epoch; (the models' ledger, next epoch,
    seconds spent so far), or None when there is no good checkpoint to resume from."""
    fix = f"delete {checkpoint} to restart this stack from its first epoch"
    state = load_checkpoint(checkpoint, _is_stack_state, map_location=next(stack.parameters()).device,
                            weights_only=False)
    if state is None:
        return None
    saved = state.get("configs")
    if (not isinstance(saved, list) or len(saved) != len(cfgs) or not all(isinstance(d, dict) and c.matches(d)
                                                                          for c, d in zip(cfgs, saved))
            or state.get("data_seed") != data_seed):
        raise L2LError(f"checkpoint {checkpoint} belongs to another stack; {fix}")
    stack.load_state_dict(state["stack"])
    opt.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle"].cpu())  # a CPU byte tensor, wherever map_location put the rest
    ledger = _Ledger(state["histories"], state["best"], state.get("stopped", [None] * len(cfgs)))
    return ledger, state["epoch"] + 1, float(state["wall_seconds"])
