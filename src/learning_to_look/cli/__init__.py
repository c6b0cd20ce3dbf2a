"""The ``l2l`` command: a thin layer over the Python API.

Every failure a user can cause ends here as one line on stderr and exit code 2,
never a traceback: :class:`~learning_to_look.errors.L2LError`, a bad option, an
``OSError`` (a read-only folder, a file where a folder should be) and a truncated
file. Only a real Ctrl-C, at any moment including start-up, gives exit 130.
"""

from __future__ import annotations

import importlib
import logging
import sys

ABORTED = "aborted; rerun the same command to resume"


#: Command -> the module that registers it on the root app when imported.
COMMANDS = {"train": "train", "sweep": "sweep", "reproduce": "reproduce", "report": "report", "data": "data",
            "maps": "maps", "predict": "predict", "explain": "predict", "tune": "tune"}


def _app(argv: list[str] | None = None):
    """The root app with the commands registered, imported only when run so that a Ctrl-C
    during those imports (torch comes with them) is caught like any other. A command
    given on the command line imports its own module only, which is what keeps a failing
    command (e.g. a missing model offline) quick."""
    from .app import app

    first = next((a for a in argv or [] if not a.startswith("-")), None)
    for name in [COMMANDS[first]] if first in COMMANDS else dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"{__name__}.{name}")
    return app


def _run(argv: list[str] | None) -> int:
    import typer
    from typer._click.exceptions import NoArgsIsHelpError

    from ..errors import L2LError, os_error

    try:
        code = _app(sys.argv[1:] if argv is None else argv)(args=argv, prog_name="l2l", standalone_mode=False)
    except L2LError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(str(os_error(e)))
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort as e:  # click turns both Ctrl-C and an EOFError into Abort
        if isinstance(e.__context__, EOFError):
            return _fail("a file ended unexpectedly (empty or truncated); delete the file named in the command's "
                         "options or its cache entry and rerun")
        print(ABORTED, file=sys.stderr)
        return 130
    except NoArgsIsHelpError as e:  # `l2l` or `l2l maps` alone: the help is the answer
        print(e.format_message())
        return 0
    except typer.TyperException as e:  # usage errors: unknown option, bad value
        return _fail(f"{e.format_message().rstrip('.')}; see `l2l --help`")
    if code == 130:  # typer turns Ctrl-C into a return value
        print(ABORTED, file=sys.stderr)
    return code if isinstance(code, int) else 0


def _fail(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print(ABORTED, file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
