"""Progress bars that degrade cleanly: drawn on a terminal, left out when the output is a
file or a pipe (no carriage returns or cursor escapes in a log), and always off when asked."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def bar(iterable: Any = None, *, show: bool = True, **kw: Any) -> tqdm:
    """``tqdm(iterable, **kw)``, shown only when ``show`` and stderr is a terminal."""
    return tqdm(iterable, disable=not show or not sys.stderr.isatty(), dynamic_ncols=True, mininterval=0.5, **kw)
