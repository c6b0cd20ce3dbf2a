"""Training methods, one module each; importing this package registers them all."""

from .base import METHODS, Batch, Method, register_method
# each registers its methods
from . import (vanilla, l2l, region, eg, cdep, gals, energy, hint, ce,  # noqa: F401
               upweight, groupdro, jtt, dfr, afr)

#: The method every ``Method.epoch_cost`` is relative to: cross-entropy alone.
BASELINE = vanilla.Vanilla.name

__all__ = ["BASELINE", "METHODS", "Batch", "Method", "register_method"]
