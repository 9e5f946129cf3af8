# Two entry points (see README): `make run` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build by default: a bare `pip install torch` resolves to a multi-GB CUDA build on Linux.
# Override with e.g. `make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/quickstart.yaml

.PHONY: setup run test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Never reinstall a torch that is already there (whatever its build).
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[offline,test]"
	@touch $@

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/prunekit run $(CONFIG)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check prunekit tests experiments
	$(BIN)/ruff format --check prunekit tests experiments
	$(BIN)/lint-imports  # the layers of README "Architecture" (contracts in pyproject.toml)

format: setup
	$(BIN)/ruff format prunekit tests experiments
	$(BIN)/ruff check --fix prunekit tests experiments

clean:
	rm -rf $(VENV) .pytest_cache
