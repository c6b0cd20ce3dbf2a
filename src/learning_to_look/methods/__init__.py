"""Training methods, one module each; importing this package registers them all."""

from .base import METHODS, Batch, Method, register_method
# each registers its methods
from . import vanilla, l2l, region, eg, cdep, upweight, groupdro, jtt, dfr, afr  # noqa: F401

__all__ = ["METHODS", "Batch", "Method", "register_method"]
