# The two commands of the README:  `make serve`  and  `make test`.
# Everything installs into ./.venv; nothing outside it is touched (except CI's apt tools).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch from the local wheel when this machine has one (a plain `pip install torch`
# pulls the CUDA build and gigabytes of libraries); anywhere else pip resolves torch.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))

.PHONY: install install-dev demo-packs serve test lint

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml export/install_chattts.sh
	if [ -n "$(TORCH_WHEEL)" ]; then $(PIP) install -q "$(TORCH_WHEEL)"; fi
	$(PIP) install -q -e ".[cpu,export]"
	bash export/install_chattts.sh $(VENV)/bin/pip
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[cpu,export,dev,test,cluster]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The offline default: tiny random-weight packs (flagged "demo": true) for every model.
demo-packs: install
	$(PY) -m export demo --models-dir models

serve: demo-packs
	$(PY) -m service

test: install-dev
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
