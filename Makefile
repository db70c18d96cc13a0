# make demo   - the main job (trains the teacher and one student on the quick recipe)
# make test   - the test suite
# Both install what they need first (virtual env, pinned packages, the dataset), once.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup dataset test demo bench lint clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "gtnpipe needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,train,build,onnx,openvino,tflite]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (nothing is downloaded at run time).
dataset:
	@if [ ! -f $(FMNIST) ] && [ -z "$$GTNPIPE_FASHION_MNIST" ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/gtnpipe pool info
	$(BIN)/gtnpipe train --model teacher --recipe quick
	$(BIN)/gtnpipe train --recipe quick --model "$$($(BIN)/gtnpipe pool sample -n 1 --seed 1 --json | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)[0]["arch"])')"

bench: setup
	$(BIN)/python bench/train_speed.py

lint: setup
	$(BIN)/ruff check gtnpipe tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
