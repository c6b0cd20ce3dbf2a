"""learning-to-look: align a CNN's attention with maps from a vision-language model."""

import os
import sys

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]

#: Deterministic cuBLAS needs this before CUDA starts, so it is set on import, before any
#: CUDA call of this package. A program that started CUDA before importing it cannot be
#: helped; :func:`learning_to_look.training.engine.set_determinism` says so then.
CUDA_STARTED_FIRST = "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized()
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def __getattr__(name: str):
    """``learning_to_look.load_run``, imported on first use: the package itself stays
    free of torch, so ``l2l --help`` and a Ctrl-C at start-up stay instant."""
    if name == "load_run":
        from .inference import load_run

        return load_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
