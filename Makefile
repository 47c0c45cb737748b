# `make demo` and `make test` work from a clean clone: they build .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
IMITATION_VERSION := 1.0.1

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m pip install -q --no-deps imitation==$(IMITATION_VERSION)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/structrl train --algo ppo --policy rim --env MiniGrid-Empty-5x5-v0 \
		--hyperparams zoo/ppo_lstm.yml --params bptt_length=32 --out runs/demo
	$(BIN)/structrl generalize runs/demo/model.zip \
		--envs MiniGrid-Empty-5x5-v0,MiniGrid-Empty-6x6-v0,MiniGrid-Empty-8x8-v0,MiniGrid-Empty-16x16-v0 \
		--episodes 100 --json runs/demo/generalization.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check structrl tests benchmarks
	$(BIN)/ruff format --check structrl tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
