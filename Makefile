# patchray developer entry points. A fresh machine needs only:
#   make demo   # set up .venv and run the whole pipeline end to end
#   make test   # set up .venv (+ test servers) and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test test-deps test-unit clean images image-serve image-train image-train-gpu kuberay-render

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

# Container images (infra/docker/). The names are what infra/kuberay and infra/cluster use
# (a unit test holds them together); push to your registry with IMAGE_REGISTRY=... .
IMAGE_REGISTRY ?= registry.example.com/patchray
IMAGE_TAG      ?= 0.1.0
SERVE_IMAGE     := $(IMAGE_REGISTRY)/patchray-serve:$(IMAGE_TAG)
TRAIN_IMAGE     := $(IMAGE_REGISTRY)/patchray-train:$(IMAGE_TAG)
TRAIN_GPU_IMAGE := $(IMAGE_REGISTRY)/patchray-train-gpu:$(IMAGE_TAG)

images: image-serve image-train image-train-gpu
image-serve:
	docker build -f infra/docker/serve.Dockerfile -t $(SERVE_IMAGE) .
image-train:
	docker build -f infra/docker/train.Dockerfile --build-arg EXTRAS=train -t $(TRAIN_IMAGE) .
image-train-gpu:
	docker build -f infra/docker/train.Dockerfile --build-arg EXTRAS=train,gpu -t $(TRAIN_GPU_IMAGE) .

# infra/kuberay/rayservice.yaml from its template + serve/config.yaml (one source).
kuberay-render: setup
	$(BIN)/python -m patchray.deploy.kuberay

clean:
	rm -rf $(VENV) runs .pytest_cache
