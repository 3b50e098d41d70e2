# Two commands do everything on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   install, start local Redis + Kafka, run the example end to end
#   make test   install, start local Redis + Kafka, run the whole test suite
SHELL := /bin/bash
PY ?= python3
UV := $(PY) -m uv
VENV := .venv
TESSERA := $(VENV)/bin/tessera
PYTEST_ARGS ?=

.PHONY: install compile services cluster demo test down status lint bench clean

install: $(VENV)/.installed

# uv installs exactly the versions in uv.lock; re-run only when the lock, the project or this
# recipe changes. --compile-bytecode writes every package's .pyc at install (~35 s once, ~3 s
# when already done): uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (as in
# many images and CI boxes) no import ever caches one, so every process compiled its imports
# from source. Measured: `import great_expectations` 11-12.7 s -> 5.0-5.3 s, `import evidently`
# 11.2-12.5 -> 5.2, `import feast` 8.7-9.1 -> 4.4, a fresh SDK process's first online read
# 0.25-0.34 s -> 0.11-0.13 s (docs/online.md, "A serving process's first seconds").
$(VENV)/.installed: pyproject.toml uv.lock Makefile
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# The online read path's modules as C extensions (features/compiled.py). A module edited since
# its build imports as Python, never as the old build; this rebuilds only what changed. A
# failed build is a warning: the read path then runs as Python, with the same results.
compile: install
	@$(TESSERA) compile || echo "tessera compile failed (above): the read path runs as Python"

services: install
	$(TESSERA) services up

# The local 3-master Redis Cluster (127.0.0.1:7001-7003), with Redis and Kafka.
cluster: install
	$(TESSERA) services up --cluster

demo: services compile
	$(TESSERA) demo

test: services compile
	$(VENV)/bin/pytest $(PYTEST_ARGS)

status: install
	$(TESSERA) services status

down:
	@if [ -x $(TESSERA) ]; then $(TESSERA) services down; fi

lint: install
	$(VENV)/bin/ruff check features pipelines streaming validation tessera tests bench

clean: down
	rm -rf .tessera
