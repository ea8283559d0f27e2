# Two entry points: `make run` (demo) and `make test` (whole suite). Both install into .venv first;
# the install is redone only when setup.cfg or pyproject.toml change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint clean results quote gpu-prepare

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pyro-vae train --dataset digits --epochs 300 --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

# Numbers quoted in README.md and docs/ come from the experiments' summary lines, stored in
# docs/results/<name>.txt. `make results` runs the experiments whose results file is missing (or
# those named: make results RESULTS="importance_sampling_gap pca_vs_autoencoder"; SNAPSHOT=1 runs
# the committed code instead of the working tree's), stores their summary lines and rewrites every
# marked number; `make quote` only rewrites them from the stored results.
results: $(STAMP)
	$(BIN)/python experiments/quote_results.py run $(if $(SNAPSHOT),--snapshot) $(RESULTS)

quote: $(STAMP)
	$(BIN)/python experiments/quote_results.py quote

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info .gpu

# What experiments/gpu_check.sh needs on a lent GPU machine that cannot download: the wheels its
# image lacks (pure Python, at the versions tested here) and MNIST, in .gpu/ (ignored: name it in
# the device call's carry).
GPU_WHEELS := pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 h5netcdf==1.8.3 xarray-einstats==0.9.1 platformdirs==4.14.9
gpu-prepare: $(STAMP)
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/data
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .gpu/wheels $(GPU_WHEELS)
	cp -r ../shared/data/mnist .gpu/data/mnist
