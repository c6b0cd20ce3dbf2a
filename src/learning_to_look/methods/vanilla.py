"""Cross-entropy alone: the baseline every guided method is compared with."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class Vanilla(Method):
    """Cross-entropy only: the shortcut-prone baseline."""

    name = "vanilla"
    paper = "empirical risk minimisation"
    summary = "cross-entropy alone"
