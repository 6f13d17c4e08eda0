# One command per job; each creates/updates the environment it needs (scripts/ensure_env.sh).
PY := .venv/bin/python
SRC := $(wildcard robustfast tests examples benchmarks)
.PHONY: env data demo test lint docs lock clean

env: ## the pinned virtual environment (.venv)
	@./scripts/ensure_env.sh

data: ## offline test data: installs Debian's dataset-fashion-mnist where apt-get can run (root); else its tests skip
	@./scripts/ensure_data.sh

demo: env ## the main job: train + evaluate on digits (offline, minutes on CPU); writes runs/demo/
	$(PY) -m robustfast.cli train --preset demo --output runs/demo --overwrite

test: env data ## the test suite
	$(PY) -m pytest -q

lint: env
	$(PY) -m ruff check $(SRC)
	$(PY) -m ruff format --check $(SRC)

docs: env
	$(PY) -m mkdocs build --strict --site-dir site

lock: ## regenerate constraints.txt from constraints-base.txt (needs the package registries)
	rm -rf /tmp/robustfast-lock && python3 -m venv /tmp/robustfast-lock
	/tmp/robustfast-lock/bin/pip install -q -c constraints-base.txt -e ".[dev]"
	/tmp/robustfast-lock/bin/pip install -q --no-deps torchattacks
	(head -2 constraints.txt; /tmp/robustfast-lock/bin/pip freeze --all --exclude-editable | grep -vE "^(robustfast|pip)==") > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf .venv site .pytest_cache build *.egg-info
