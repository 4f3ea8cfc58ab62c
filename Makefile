# patchray developer entry points. A fresh machine needs only:
#   make demo   # set up .venv and run the whole pipeline end to end
#   make test   # set up .venv (+ test servers) and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test test-deps test-unit clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (patchray pins Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/patchray demo --config jobs/demo.yaml

# Test servers and load tools the suite starts itself, from Debian: Prometheus (promtool) and
# wrk (load on loopback). moto and tritonclient come from PyPI.
DEBIAN_TEST_DEPS := prometheus wrk
test-deps:
	@missing=""; for p in $(DEBIAN_TEST_DEPS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

test: setup test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
