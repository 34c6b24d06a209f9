# One entry point for set-up, tests, the service and the benchmarks. Every target installs what it
# needs into .venv first, so each works on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch (found on this machine class's local wheel index). GPU nodes get the
# CUDA build from the Docker image instead; pyproject.toml admits both.
TORCH_CPU ?= torch==2.13.0

.PHONY: install test lint unit serve bench serve-bench clean demo-model mutation soak compat

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check app tests benchmarks scripts baselines
	$(VENV)/bin/ruff format --check app tests benchmarks scripts baselines
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q

test: lint unit

# Mutation testing (not in CI, not part of `make test`; about 7 minutes on 2 cores): mutmut
# changes the pure-Python core one mutation at a time ([tool.mutmut] in pyproject.toml) and runs
# that code's fast unit tests against each mutant. Lists the mutants no test killed;
# docs/testing.md has the score and why each remaining survivor is equivalent.
mutation: install
	rm -rf mutants
	HYPOTHESIS_PROFILE=mutation $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

# With no GPT2_MODEL, the service serves the small GPT-2 bundled in app/models/gpt2-demo (works
# offline). Real GPT-2: GPT2_MODEL=gpt2 make serve (needs the hub) or a checkpoint directory.
serve: install
	$(VENV)/bin/gpt2-serve serve $(ARGS)

# Retrain the bundled demo model (about 75 minutes: 73.7 on one CPU thread; see its README.md).
demo-model: install
	$(PY) -m pip install -q -e '.[train]'
	$(PY) scripts/train_demo_model.py

bench: install
	$(PY) -m benchmarks.engine_bench $(ARGS)

# The HTTP promises (issue 6): sweep, seed baseline side by side, mixed load, ceiling. ~15 min.
serve-bench: install
	$(PY) -m benchmarks.serve_bench $(ARGS)

# Soak and chaos (issue 16; not part of `test`): the demo model on 127.0.0.1 at twice a small
# capacity for SOAK_SECONDS (default 600), disconnects, deadlines, oversized inputs, a worker kill
# every 200 s, a SIGTERM at the end; checks and prints a summary (docs/operations.md).
SOAK_SECONDS ?= 600
soak: install
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS) $(ARGS)

# Real clients, unchanged (issue 17; not part of `test` nor CI): installs guidellm, aiperf,
# inference-perf and litellm, each in its own environment under .cache/compat/ (not .venv; a few
# minutes each the first time), serves the demo model on 127.0.0.1 and runs each client against
# it, small and bounded, offline; checks 0 errors and token totals equal to /metrics, one line per
# client, non-zero exit on any failure. inference-perf needs Python >= 3.12: COMPAT_PYTHON=...
# See docs/compat.md.
compat: install
	$(PY) -m scripts.compat $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants

# Offline validation of Dockerfile, compose files, deploy/ and k8s/ (installs its validators into
# .cache/deploy-tools when missing). See docs/deploy.md.
.PHONY: deploy-check
deploy-check:
	bash scripts/validate_deploy.sh
