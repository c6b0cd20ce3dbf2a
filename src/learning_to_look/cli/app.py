"""The root typer app; every command module registers itself on it."""

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

def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"l2l (learning-to-look) {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Learning to Look: train CNNs whose attention follows vision-language-model maps."""
