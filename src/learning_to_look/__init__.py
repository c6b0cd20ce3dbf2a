"""learning-to-look: align a CNN's attention with maps from a vision-language model."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    """``learning_to_look.load_run``, imported on first use: the package itself stays
    free of torch, so ``l2l --help`` and a Ctrl-C at start-up stay instant."""
    if name == "load_run":
        from .inference import load_run

        return load_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
