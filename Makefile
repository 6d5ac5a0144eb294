# Two entry points (see README "Quick start"):
#   make run   - set up .venv, run the default suite on the embedded MultiMNIST, build the site
#   make test  - set up .venv with the test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint setup setup-dev site clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

setup-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"

# two cells at a time on one thread each (on 2 cores, 1.35x the cells per minute of one cell on
# two threads); no per-epoch checkpoints (a default cell takes seconds)
run: setup
	$(BIN)/mtlbench run --runs-per-device 2 --no-checkpoint
	$(BIN)/mtlbench leaderboard

# the public leaderboard: the accepted results in leaderboard/results/ -> leaderboard/site/
site: setup
	$(BIN)/mtlbench leaderboard --results leaderboard/results --out leaderboard/site

test: setup-dev lint
	$(BIN)/python -m pytest

# style and static checks of the engine and the plugins (part of `make test`)
lint: setup-dev
	$(BIN)/ruff check mtlbench baselines tasks
	$(BIN)/ruff format --check mtlbench baselines tasks
	$(BIN)/mypy mtlbench baselines tasks

clean:
	rm -rf $(VENV) results leaderboard/site
