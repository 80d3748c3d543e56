# Developer and CI entry points. `make test` is what CI runs (.ci/run).
PY    ?= python3
VENV  ?= .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -p no:cacheprovider
# the broker of `make demo` and `make test-faults`: tansu (in memory) or kafka (Apache Kafka)
BROKER ?= tansu
# pytest processes of `make test`: the suites mostly wait (on group joins, idle timeouts,
# process start-up), so three share two cores well; each starts its own brokers and Redis
TEST_WORKERS ?= 3
# Lint only the source trees that exist (a fresh clone may not have all of them yet).
LINT_PATHS := $(wildcard pipeline clients tests bench)

.PHONY: help venv lint typecheck test test-unit test-faults demo bench clean distclean

help:
	@echo "make venv         create $(VENV) and install the project with its dev extras"
	@echo "make lint         ruff check"
	@echo "make typecheck    mypy pipeline and the light client"
	@echo "make test         venv + lint + typecheck + the whole pytest suite (what CI runs)"
	@echo "make test-unit    unit tests only"
	@echo "make test-faults  the full fault run (BROKER=tansu|kafka)"
	@echo "make demo         the local pipeline (sessionizer dev; BROKER=tansu|kafka)"
	@echo "make bench        the benchmark"
	@echo "make clean        remove caches and build output (keeps $(VENV))"
	@echo "make distclean    clean, and remove $(VENV)"

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the stamp is missing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev,bench]'
	touch $@

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)

typecheck: venv
	$(BIN)/mypy pipeline clients/python/sessionizer_client

test: venv lint typecheck
	$(PYTEST) -q -rfEs --durations=25 -n $(TEST_WORKERS) --dist loadfile -m "not faults or routine"

test-unit: venv
	$(PYTEST) -q tests/unit

# The full fault run (the reduced one, on both brokers, is part of `make test`);
# BROKER=kafka runs it on Apache Kafka (default tansu); FAULTS_SEED=<n> for another seed.
test-faults: venv
	BROKER=$(BROKER) $(PYTEST) -q -s -m "faults and not routine" tests/faults

# BROKER=kafka runs it on Apache Kafka (needs Java 17 and Maven); the default is Tansu
demo: venv
	$(BIN)/sessionizer dev --broker $(BROKER)

# The benchmark (bench/README.md), on the embedded Apache Kafka: installs bench/requirements.txt
# first and builds bench/kstreams (Kafka Streams, mvn) when it changed; BENCH_ARGS passes
# options through, e.g. make bench BENCH_ARGS="--events 100000 --only a,d" (or "--broker tansu")
bench: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# A tiny run of every phase (about a minute); results in artifacts/bench-smoke
.PHONY: bench-smoke
bench-smoke: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python -m bench.run --smoke --out artifacts/bench-smoke $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/kstreams/target
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Deployment files (docker-compose.yml, deploy/Dockerfile, deploy/k8s,
# deploy/prometheus) against their validators; see deploy/README.md.
.PHONY: validate-deploy
validate-deploy: venv
	$(PYTEST) -q tests/unit/test_deploy_manifests.py
