# Maintainer and user entry points of the signal-handling fork of MosaicML Composer.
# The logic lives in forktool/ (python -m forktool --help); these targets only wire it up.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
UPSTREAM ?=
BRANCH ?= signals
TOPIC ?=
EVIDENCE ?= 1
PR_DIR ?= build/pr
PYTEST_ARGS ?=
LINT_PATHS := composer forktool tests bench demo setup.py

.PHONY: help venv install demo test test-deps test-upstream lint wheel tree export refresh check-patches pr bench clean

help:
	@echo "make demo           install the fork into $(VENV) and run the demo (README set-up command 1)"
	@echo "make test           run the test suite against the installed fork (README set-up command 2)"
	@echo "make test-upstream  run the signal regression tests against unpatched upstream (expected to fail)"
	@echo "make venv|install|wheel|lint|check-patches|bench"
	@echo "make tree | export | refresh | pr UPSTREAM=<git checkout of mosaicml/composer> [TOPIC=<name>] [EVIDENCE=0]"
	@echo "make check-patches [UPSTREAM=<git checkout of mosaicml/composer>]"

# pip >= 24.1 parses `mosaicml @ git+file://...` requirements (older pips reject file URLs in them).
$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check --upgrade 'pip>=24.1'

venv: $(VPY)

# `pip install .` builds through setup.py (the PEP 517 backend). The second, dependency-free pass makes sure the
# freshly built fork replaces an installed one of the same version (pip issue #7678).
install: $(VPY)
	$(VPY) -m pip install --disable-pip-version-check .
	$(VPY) -m pip install --disable-pip-version-check --no-deps --force-reinstall .

demo: install
	$(VPY) demo/demo.py

test-deps: $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -r tests/requirements.txt

test: install test-deps
	$(VPY) -m pytest $(PYTEST_ARGS)

# The same signal regression tests with upstream 0.32.1's package first on PYTHONPATH, in the same venv.
test-upstream: install test-deps
	$(VPY) -m forktool target upstream --dest build/upstream-target
	-PYTHONPATH=$(CURDIR)/build/upstream-target $(VPY) -m pytest -rA tests/signal_handling $(PYTEST_ARGS) \
		| tee build/test-upstream.log
	@echo "Results: build/test-upstream.log (failures are expected where upstream behaves differently)"

lint: test-deps
	$(VPY) -m ruff check $(LINT_PATHS)
	$(VPY) -m yapf --diff --recursive $(LINT_PATHS)
	$(VPY) -m isort --check-only --diff $(LINT_PATHS)
	$(VENV)/bin/hadolint docker/Dockerfile

wheel: $(VPY)
	$(VPY) -m pip wheel --disable-pip-version-check --no-deps -w dist .

tree: $(VPY)
	$(VPY) -m forktool tree

export: $(VPY)
	$(VPY) -m forktool export

refresh: $(VPY)
	$(VPY) -m forktool refresh

check-patches: $(VPY)
	$(VPY) -m forktool check $(if $(UPSTREAM),--upstream "$(UPSTREAM)")

pr: $(VPY)
	@test -n "$(UPSTREAM)" || { echo "usage: make pr UPSTREAM=<path to a git checkout of mosaicml/composer>"; exit 2; }
	$(VPY) -m forktool pr --upstream "$(UPSTREAM)" --prefix "$(BRANCH)" --out "$(PR_DIR)" \
		$(if $(TOPIC),--topic "$(TOPIC)") $(if $(filter 0,$(EVIDENCE)),--no-evidence)

bench: install test-deps
	$(VPY) bench/run.py $(if $(QUICK),--quick) $(if $(CHECK),--check)

clean:
	rm -rf build dist
