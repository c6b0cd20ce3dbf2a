"""The ``l2l`` command: a thin layer over the Python API.

Every command turns :class:`~learning_to_look.errors.L2LError` (and bad options)
into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from ..errors import L2LError
from .app import app
from . import data as _data  # noqa: F401  (registers the `data` commands)
from . import maps as _maps  # noqa: F401
from . import train as _train  # noqa: F401
from . import reproduce as _reproduce  # noqa: F401
from . import report as _report  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
    try:
        code = app(args=argv, prog_name="l2l", standalone_mode=False)
    except L2LError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("aborted; rerun the same command to resume", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # usage errors: unknown option, bad value
        print(f"error: {e.format_message().rstrip('.')}; see `l2l --help`", file=sys.stderr)
        return 2
    if code == 130:  # typer turns Ctrl-C into a return value
        print("aborted; rerun the same command to resume", file=sys.stderr)
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())
