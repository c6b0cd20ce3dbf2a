"""Analysis of run records: aggregation over seeds, statistics, verdicts, the report and
its figures. It reads records only, never models, maps or data."""
