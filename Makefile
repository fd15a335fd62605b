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
LINT_PATHS := composer forktool tests bench stress demo clients setup.py
# `make lint` builds its own tree here (not build/tree, a developer's) to lint the upstream-bound files in it.
LINT_TREE ?= build/lint-tree

.PHONY: help venv install demo test test-deps test-full test-upstream bench-checkpoint lint lint-upstream lint-pr docs-upstream wheel tree export refresh check-patches pr bench stress client client-tests clean

help:
	@echo "make demo           install the fork into $(VENV) and run the demo (README set-up command 1)"
	@echo "make test           run the test suite against the installed fork (README set-up command 2)"
	@echo "make test-upstream  run the signal regression tests against unpatched upstream (expected to fail)"
	@echo "make venv|install|wheel|lint|lint-upstream|check-patches|bench"
	@echo "make bench-checkpoint [QUICK=1]  SIGTERM to a durable ~1 GB checkpoint, local and S3 (bench/results/checkpoint-1gb.md)"
	@echo "make test-full      tests/production with its heavier variants (COMPOSER_FORK_FULL=1)"
	@echo "make lint-pr UPSTREAM=<git checkout> BASE=<rev>  upstream's pre-commit checks on base..HEAD"
	@echo "make docs-upstream UPSTREAM=<git checkout> [BASE=<rev>]  upstream's Sphinx build of its docs (pandoc; minutes)"
	@echo "make stress [QUICK=1] [SEED=s RUN=i]  signal storm (stress/run.py): 200 runs + 16 sharded + 5 race rounds; QUICK: 10-11 + 2 sharded + 1"
	@echo "make tree | export | refresh | pr UPSTREAM=<git checkout of mosaicml/composer> [TOPIC=<name>] [EVIDENCE=0]"
	@echo "make check-patches [UPSTREAM=<git checkout of mosaicml/composer>]"
	@echo "make client [QUICK=1] [DOCS=1]  LLM Foundry 0.22.0's CLI end to end, fork vs upstream (docs/clients.md)"
	@echo "make client-tests COMPOSER_TESTS=<composer v0.32.1 checkout> LLMFOUNDRY=<llm-foundry release/v0.22.0 checkout>"
	@echo "                    clients' own tests on the fork and on upstream 0.32.1, outcomes compared (either or both)"

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
	$(MAKE) lint-upstream

# Upstream's .pre-commit-config.yaml checks at its pinned versions (build/lint-venv), on the files the series and the
# fork's own files add or change, in a tree of the pinned release (its `upstream` tag is the base).
lint-upstream: install test-deps
	$(VPY) -m forktool tree --dest $(LINT_TREE) >/dev/null
	$(VPY) -m forktool lint-upstream --repo $(LINT_TREE) --base upstream --python $(VPY)

# The same on a branch of an upstream checkout, e.g. a PR branch: make lint-pr UPSTREAM=<checkout> BASE=<rev>
lint-pr: $(VPY)
	@test -n "$(UPSTREAM)" -a -n "$(BASE)" || { echo "usage: make lint-pr UPSTREAM=<git checkout> BASE=<rev>"; exit 2; }
	$(VPY) -m forktool lint-upstream --repo "$(UPSTREAM)" --base "$(BASE)" --python $(VPY)

# Upstream's Sphinx build of an upstream checkout's docs (e.g. with patches/upstream-only applied), offline: needs
# pandoc (Debian's) and takes minutes, so lint-upstream only parses the rst pages. Output: build/docs-upstream/html.
# BASE=<rev>: only warnings about the files base..HEAD changes fail it.
docs-upstream: install
	@test -n "$(UPSTREAM)" || { echo "usage: make docs-upstream UPSTREAM=<git checkout of mosaicml/composer>"; exit 2; }
	$(VPY) -m forktool.lint docs-upstream --repo "$(UPSTREAM)" --python $(VPY) $(if $(BASE),--base "$(BASE)")

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

# SIGTERM to a durable ~1 GB checkpoint, local disk and S3 (moto on loopback), next to a periodic save of the same
# size, fork vs upstream (bench/checkpoint_size.py). Minutes; not in CI: its last results are committed in
# bench/results/checkpoint-1gb.md. QUICK=1: 100 MB, one round, into build/bench/quick.
bench-checkpoint: install test-deps
	$(VPY) bench/checkpoint_size.py $(if $(QUICK),--quick)

# The production set-ups' heavier variants too (COMPOSER_FORK_FULL=1: S3 on two ranks, autoresume on two nodes).
test-full: install test-deps
	COMPOSER_FORK_FULL=1 $(VPY) -m pytest tests/production $(PYTEST_ARGS)

# Signal storm: trainings signalled at the worst moments; SEED=s RUN=i replays one run (its folder stays in build/stress).
stress: install test-deps
	$(VPY) stress/run.py $(if $(QUICK),--quick) $(if $(SEED),--seed $(SEED)) $(if $(RUN),--run $(RUN)) $(if $(RUNS),--runs $(RUNS)) $(if $(JOBS),--jobs $(JOBS))

# Clients' own test suites run on the fork and on upstream 0.32.1's package in the same venv; the per-test outcomes
# must be identical (clients/suites, docs/client-tests.md). Results: build/client-tests/.
client-tests: install test-deps
	$(VPY) -m clients.suites $(if $(LLMFOUNDRY),--llmfoundry "$(LLMFOUNDRY)") \
		$(if $(COMPOSER_TESTS),--composer "$(COMPOSER_TESTS)") $(CLIENT_TESTS_ARGS)

# LLM Foundry's own CLI trains a tiny MPT on CPU in build/client-venv (built or updated first), fork vs upstream:
# preemption saving, the close timeout, SIGTERM. DOCS=1 writes the results into docs/clients.md.
client: install
	$(VPY) -m clients.llmfoundry $(if $(QUICK),--quick) $(if $(DOCS),--write-docs)

clean:
	rm -rf build dist
