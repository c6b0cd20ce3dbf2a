"""From a config to a run that can train: validated once, the method's defaults filled
in, and the method and map source built once, here, for everything downstream."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data import DatasetSpec, irrelevant_component
from ..data.imported import dataset_spec
from ..data.store import content_hash, dataset_path, read_header
from ..errors import L2LError
from ..maps.base import MapGenerator
from ..maps.options import build_map_source
from ..methods import METHODS, Method
from ..nn.backbones import BACKBONES, backbone_class
from ..nn.losses import TARGETS
from ..nn.pretrained import check_pretrained
from ..scalars import check_logger
from .selection import RULES


@dataclass
class Resolved:
    """A run ready to train: its resolved config, its one method object, the data set's
    description and its one map generator (None without maps, or for a cached map set,
    which is read by name)."""

    cfg: TrainConfig
    method: Method
    spec: DatasetSpec
    maps: MapGenerator | None = None


def resolve_run(cfg: TrainConfig, data_dir: str | os.PathLike | Path | None = None) -> Resolved:
    """Validate the whole config and fill the method's defaults into unset fields. Called
    once, where a run enters (``l2l train``, a profile's plan, a sweep); everything
    downstream takes what it returns as it is, so a config that cannot train is refused
    here, before any data is loaded or folder made. An imported data set is read from
    its file's header in ``data_dir``, so the checks below see it."""
    cfg = dataclasses.replace(cfg).validate().with_schedule_defaults()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise L2LError(f"device {cfg.device} requested but CUDA is not available; pass --device cpu (or auto)")
    spec = dataset_spec(cfg.dataset, data_dir)
    cfg.data_hash = imported_hash(spec, data_dir)
    method = METHODS.get(cfg.method)(cfg)  # holds cfg itself, so it sees the defaults filled in below
    method.irrelevant = irrelevant_component(spec, cfg.irrelevant)
    if spec.imported_from is None:  # a built set declares it: one folder whether it is stated or not
        cfg.irrelevant = None
    fill_options(cfg, method)
    method.check_dataset(spec)
    if cfg.selection == "val_worst_group" and not spec.group_names:
        raise L2LError(f"--selection val_worst_group needs group labels and {spec.name} has none; use --selection "
                       "val_acc, or a data set with groups (shapes-bg, or an import with a group column)")
    TARGETS.get(cfg.target)
    if cfg.selection is not None:
        RULES.get(cfg.selection)
    if cfg.augment != "none" and spec.imported_from is None:
        raise L2LError(f"--augment is for imported data sets; {spec.name} is built in and trains as its protocol says, "
                       "without augmentation: drop --augment")
    if cfg.network_size is None and spec.imported_from is not None and BACKBONES.get(cfg.backbone).any_size:
        cfg.network_size = spec.size  # the images keep their size: no second resize after import
    method.check_backbone(backbone_class(cfg.backbone, cfg.network_size))
    check_pretrained(cfg.backbone, cfg.pretrained)
    check_logger(cfg.log)
    if cfg.freeze_until:
        _check_freeze(cfg, method)
    if method.two_phase and cfg.e_att >= cfg.epochs:
        raise L2LError(f"E_att must lie below the number of epochs, got {cfg.e_att} with {cfg.epochs} epochs; "
                       "pass --e-att below --epochs")
    if cfg.lambda0 is None or not method.default_lambda:  # a λ given to vanilla weighs nothing: not recorded
        cfg.lambda0 = method.lambda_default()
    if cfg.selection is None:
        cfg.selection = method.default_selection
    if not method.uses_maps:
        cfg.maps, cfg.map_options = "none", {}
        return Resolved(cfg, method, spec)
    if cfg.maps == "none":
        raise L2LError(f"method {cfg.method} needs maps and --maps is none; pass a map source, e.g. --maps oracle "
                       "(annotation) or --maps intensity (none needed)")
    return Resolved(cfg, method, spec, build_map_source(cfg.maps, cfg.map_options))


def fill_options(cfg: TrainConfig, method: Method) -> None:
    """The method's own options (``Method.option_defaults``) set to their defaults where
    unset (a callable default is computed from the config); any other method option given
    here would be silently ignored, so it is refused. Then the method checks their values."""
    wanted = method.option_defaults()
    for name, default in wanted.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, default(cfg) if callable(default) else default)
    for name in sorted({n for m in METHODS.values() for n in m.options} - set(wanted)):
        if getattr(cfg, name) is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if name in method.options:
            raise L2LError(f"{flag} does not apply to method {cfg.method} when the irrelevant component is "
                           f"{method.component}; drop it")
        owners = ", ".join(m.name for m in METHODS.values() if name in m.options)
        raise L2LError(f"{flag} is an option of method {owners}, not of {cfg.method}; drop it")
    method.check_options()


def _check_freeze(cfg: TrainConfig, method: Method) -> None:
    """``--freeze-until`` needs a backbone with named stages and a method that never reaches the pixels."""
    backbone = BACKBONES.get(cfg.backbone)
    if cfg.freeze_until not in backbone.stages:
        raise L2LError(f"--freeze-until {cfg.freeze_until}: backbone {cfg.backbone} has no such stage "
                       f"({'its stages: ' + ', '.join(backbone.stages) if backbone.stages else 'it has no stages'}); "
                       "use --backbone resnet18 or resnet50, or drop --freeze-until")
    if cfg.augment != "none":
        raise L2LError("--augment changes the images every epoch, and a frozen part's cached output cannot follow; "
                       "drop --augment or --freeze-until")
    if method.reads_pixels:
        raise L2LError(f"method {cfg.method} reads the input pixels' gradients, which a frozen backbone's cached "
                       "features do not have; drop --freeze-until or use a CAM-based method")


def imported_hash(spec: DatasetSpec, data_dir: str | os.PathLike | Path | None) -> str | None:
    """An imported data set's content hash (its file's header, read without the arrays):
    part of its runs' identity, since the same name can be imported again with other
    images. Built data sets are fixed by their protocol version: None."""
    if spec.imported_from is None:
        return None
    return content_hash(read_header(dataset_path(spec.name, data_dir), spec.name))[:16]


def resolve(cfg: TrainConfig, data_dir: str | os.PathLike | Path | None = None) -> TrainConfig:
    """The resolved config of :func:`resolve_run`: what names a run's folder and its record."""
    return resolve_run(cfg, data_dir).cfg
