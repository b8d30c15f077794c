# `make demo` installs embcli into .venv and runs the main job on sample_data/.
# `make test` installs embcli with its test dependencies and runs the test suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_MODEL := demo-model
# The CPU build of torch; an unpinned torch can pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install install-test demo demo-zh test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/embcli build-vocab -m $(DEMO_MODEL) sample_data/kjv.txt.gz --force
	$(BIN)/embcli train -m $(DEMO_MODEL) --epochs 5
	$(BIN)/embcli neighbors -m $(DEMO_MODEL) -k 8 king water god
	$(BIN)/embcli neighbors -m $(DEMO_MODEL) -k 8 jerusalem

# Tang poems: one token per character suits classical Chinese. The corpus is small
# (18 k characters), so it takes more epochs than the English demo.
demo-zh: install
	$(BIN)/embcli build-vocab -m $(DEMO_MODEL)-zh sample_data/tang300.txt.gz --force
	$(BIN)/embcli train -m $(DEMO_MODEL)-zh --epochs 20 --dim 50
	$(BIN)/embcli neighbors -m $(DEMO_MODEL)-zh -k 8 月 春 酒

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_MODEL) $(DEMO_MODEL)-zh .pytest_cache
