# Two commands for a newcomer: `make repro` (set up + run the pipeline) and `make test` (set up + all tests).
# Both create/reuse ./.venv and install exactly the versions in constraints.txt.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.timbrelab-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast params params-check mlflow-ui lock clean-venv

setup: $(STAMP)

# torch first and pinned: a looser spec (or letting another package pull it) downloads a multi-GB
# CUDA build. tinysoundfont declares pyaudio (needs PortAudio headers to build) but only uses it for
# live playback, so it goes in with --no-deps. hydra-optuna-sweeper declares optuna<3, but works with
# the optuna 5 of constraints.txt (docs/experiments.md, Sweeps), so it goes in with --no-deps too.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps tinysoundfont hydra-optuna-sweeper
	touch $(STAMP)

# dvc.lock.cpu.json: the CPU and torch code paths (timbrelab.cpu) the run was made with; the lock test
# compares trained models byte for byte only on a machine with the same fingerprint.
repro: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/python -m timbrelab.cpu --write dvc.lock.cpu.json

# What CI runs (.ci/run): every test, the slow end-to-end DVC ones included.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Quick local loop: everything except the end-to-end pipeline tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

params: $(STAMP)
	$(BIN)/timbrelab params

params-check: $(STAMP)
	$(BIN)/timbrelab params --check

# The repository's own store, local only (127.0.0.1). One worker and no job runner (MLflow's GenAI
# job queue, a handful of processes this project never uses). tests/test_mlflow_server.py runs this
# very line (from `make -n`) on a free MLFLOW_PORT.
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri "sqlite:///$(abspath mlflow.db)" --default-artifact-root "$(abspath mlartifacts)" --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# Refresh constraints.txt from the current venv after a deliberate upgrade (then run `make test`).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' | sort > constraints.txt.new
	echo "torch==2.13.0" >> constraints.txt.new && sort -o constraints.txt.new constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
