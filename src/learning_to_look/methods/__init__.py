"""Training methods, one module each; importing this package registers them all."""

from .base import METHODS, Batch, Method, register_method
from . import vanilla, l2l, region, eg, cdep, gals, energy, hint, ce  # noqa: F401  (each registers its methods)

#: The method every ``Method.epoch_cost`` is relative to: cross-entropy alone.
BASELINE = vanilla.Vanilla.name

__all__ = ["BASELINE", "METHODS", "Batch", "Method", "register_method"]
