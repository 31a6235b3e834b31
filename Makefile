# Set-up and the two everyday commands. Everything lands in .venv (created if absent).
#   make repro   install, then run the whole DAG on the embedded sample (dvc repro)
#   make test    install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# stage commands say `python`: make it the venv's for dvc and snakemake run from here
export PATH := $(abspath $(BIN)):$(PATH)
# CPU build by default; on a GPU server install your CUDA torch first (any 2.x) and it is kept.
TORCH_SPEC ?= torch==2.13.0
MXNET_VENV ?= .venv-mxnet
PYTEST_ARGS ?=
STAMP := $(VENV)/.arcpipe-installed

.PHONY: install repro snakemake test test-all mxnet-ref clean-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	# MTCNN weights (PNet/RNet/ONet state dicts) ship in this wheel; its own pins (torch<2.3,
	# numpy<2, torchvision) would break the env, so it comes without dependencies: we only read its files.
	# insightface is the alignment reference the tests compare against; it comes without its
	# dependencies too, because it would pull opencv-python beside our opencv-python-headless.
	$(BIN)/pip install --quiet --no-deps "facenet-pytorch==2.6.0" "insightface==2.1"
	touch $(STAMP)

install: $(STAMP)

repro: install
	$(BIN)/dvc repro

snakemake: install
	$(BIN)/snakemake --cores all --rerun-triggers input params code

# The mxnet reference for the RecordIO compatibility test: mxnet 1.9.1 imports only beside numpy<1.24.
# Best effort: where it cannot be built (no wheels for this Python) the test skips and says why.
$(MXNET_VENV)/bin/python:
	-$(PYTHON) -m venv $(MXNET_VENV) && $(MXNET_VENV)/bin/pip install --quiet "numpy==1.23.5" "mxnet==1.9.1" "opencv-python-headless==4.8.1.78" \
	  || { echo "mxnet reference not installed: the compatibility test will skip"; rm -rf $(MXNET_VENV); }

mxnet-ref: $(MXNET_VENV)/bin/python

test: install mxnet-ref
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install mxnet-ref
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean-outputs:
	rm -rf data models metrics plots reports logs .snakemake
