"""Run records as the public Python API names them: ``collect`` every finished run of a
folder and ``aggregate`` them over seeds (:mod:`learning_to_look.analysis.records`), each
a :class:`~learning_to_look.record.Record` (:mod:`learning_to_look.record`)."""

from .analysis.records import Row, aggregate, collect
from .record import Record, read_record

__all__ = ["Record", "Row", "aggregate", "collect", "read_record"]
