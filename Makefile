# Set-up and the two everyday commands. Everything lands in .venv (created if absent).
#   make repro   install, then run the whole DAG on the embedded sample (dvc repro)
#   make test    install, build the two reference venvs, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# stage commands say `python`: make it the venv's for dvc and snakemake run from here
export PATH := $(abspath $(BIN)):$(PATH)
# CPU build by default; on a GPU server install your CUDA torch first (any 2.x) and it is kept.
TORCH_SPEC ?= torch==2.13.0
MXNET_VENV ?= .venv-mxnet
FNP_VENV ?= .venv-fnp
# what `make test` builds before pytest; `make test REFERENCE_VENVS=` skips them (their tests then
# skip, or fail under CI=true)
REFERENCE_VENVS ?= mxnet-ref fnp-ref
PYTEST_ARGS ?=
STAMP := $(VENV)/.arcpipe-installed
REF := benchmarks/reference
MXNET_STAMP := $(MXNET_VENV)/.arcpipe-reference
FNP_STAMP := $(FNP_VENV)/.arcpipe-reference

.PHONY: install repro snakemake test test-all mxnet-ref fnp-ref reference-venvs clean-outputs

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
	$(BIN)/snakemake --cores all  # profiles/default sets the rerun triggers

# The reference venvs that tests marked `reference` run as subprocesses (pins and reasons in
# $(REF)/requirements-*.txt). A build that fails stops make; a second run only checks the stamp.
# mxnet 1.9.1 (numpy 1.23.5) for the RecordIO byte-compatibility test: seconds, ~0.4 GB.
$(MXNET_STAMP): $(REF)/requirements-mxnet.txt
	$(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/pip install --quiet -r $(REF)/requirements-mxnet.txt
	$(MXNET_VENV)/bin/python -c "import cv2, mxnet; assert mxnet.__version__ == '1.9.1', mxnet.__version__"
	touch $@

# facenet-pytorch 2.6.0 for the MTCNN parity test: PyPI's torch + torchvision, ~1.5 min, ~5.5 GB.
$(FNP_STAMP): $(REF)/requirements-fnp.txt
	$(PYTHON) -m venv $(FNP_VENV)
	$(FNP_VENV)/bin/pip install --quiet -r $(REF)/requirements-fnp.txt
	$(FNP_VENV)/bin/pip install --quiet --no-deps "facenet-pytorch==2.6.0"
	$(FNP_VENV)/bin/python -c "import facenet_pytorch.models.mtcnn"
	touch $@

mxnet-ref: $(MXNET_STAMP)

fnp-ref: $(FNP_STAMP)

reference-venvs: mxnet-ref fnp-ref

test: install $(REFERENCE_VENVS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install $(REFERENCE_VENVS)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean-outputs:
	rm -rf data models metrics plots reports logs .snakemake
