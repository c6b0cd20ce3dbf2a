"""The engines: one run (``run``), many models as one stack, sweeps, worker processes,
evaluation, and the profiles of ``l2l reproduce``."""
