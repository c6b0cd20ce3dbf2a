"""Training as the public Python API names it: ``run(TrainConfig(...))`` trains one run (or
returns it when it has finished already) and gives its record (:mod:`.training.run`)."""

from .training.run import run

__all__ = ["run"]
