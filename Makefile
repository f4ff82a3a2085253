# fgd: `make run` starts the daemon on a local state dir; `make test` runs the suite.
# Both install what they need first (Debian packages as root, then a venv in .venv/).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Per-interpreter shim packages (msgspec, python-prctl, pyseccomp) for every Python 3.9+ the node
# has besides the daemon's own, so each can serve its Python3.x runtime (fgd.shims). Wheels are
# kept in WHEELHOUSE, so a rebuild (make clean; make) works offline once they were fetched.
SHIMS := $(VENV)/runtimes/.built
WHEELHOUSE ?= $(HOME)/.cache/fgd/wheels
STATE_DIR ?= $(CURDIR)/.fgd-state
LISTEN ?= 127.0.0.1:8900
# libcap-dev builds python-prctl; libseccomp2 backs pyseccomp; util-linux gives unshare.
# Issue 14: libnftables1 is the instances' firewall (fgd.nft); nftables (the nft command) and
# iproute2 (ip) are for the operator and tests/network's lab.
DEB_PACKAGES := gcc libc6-dev libcap-dev libseccomp2 util-linux procps libnftables1 nftables iproute2

.PHONY: run test lint format bench system-packages runtimes clean bundled nodejs install uninstall deb test-install pid1

# `make install` / `make uninstall` (issue 16): fgd as a systemd service in a virtualenv at
# $(PREFIX), by scripts/install (read its header); DESTDIR= stages the files for a package.
# INSTALL_FLAGS passes more options (--no-systemctl, --no-system-packages, --no-runtimes, ...).
PREFIX ?= /opt/fgd
DESTDIR ?=
INSTALL_FLAGS ?=
# What `make test` needs besides DEB_PACKAGES: systemd-analyze (tests/install).
TEST_DEB_PACKAGES := systemd
# fgd's dependency wheels, fetched once, for the offline DESTDIR install in tests/install.
INSTALL_WHEELS := $(VENV)/.install-wheels

# FunctionGraph's bundled Python libraries (fgd/bundled.py), one read-only tree per
# interpreter under build/bundled/, wheels cached in $(WHEELHOUSE)/bundled (outside the checkout,
# so a fresh clone on the same machine does not fetch them again) so a rebuild runs offline. BUNDLED_PYTHONS names the interpreters to build for (default: every interpreter
# the daemon would serve a Python3.x name with, as fgd.interpreters finds them).
BUNDLED_PYTHONS ?= --discover
BUNDLED_STAMP := build/bundled/.stamp

# Issue 15: the sandbox's native PID 1 (sandbox/pid1.c), built beside the sandbox package that
# finds it (sandbox/reaper.py); gcc and libc6-dev come with DEB_PACKAGES ($(STAMP) is made first).
PID1 := sandbox/fgd-pid1

$(PID1): sandbox/pid1.c scripts/build-pid1 | $(STAMP)
	./scripts/build-pid1 $@

pid1: $(PID1)

# The suite's workers: most tests wait on processes, timers and sockets, so two share 2 cores well.
TEST_WORKERS ?= 2

system-packages:
	@PYTHON=$(PYTHON) ./scripts/install-system-packages $(DEB_PACKAGES)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Rebuilt when the pins change; `make runtimes` looks again (an interpreter installed since).
$(SHIMS): $(STAMP) runtimes/python/shim-requirements.txt
	$(BIN)/python -m fgd.shims build --shim-dir $(VENV)/runtimes --wheelhouse "$(WHEELHOUSE)"
	@touch $(SHIMS)

runtimes: $(STAMP)
	$(BIN)/python -m fgd.shims build --shim-dir $(VENV)/runtimes --wheelhouse "$(WHEELHOUSE)"
	@touch $(SHIMS)

$(BUNDLED_STAMP): $(STAMP) $(SHIMS) fgd/bundled.py scripts/build-bundled-libs
	$(BIN)/python scripts/build-bundled-libs --cache "$(WHEELHOUSE)/bundled" $(BUNDLED_PYTHONS)
	@touch $@

bundled: $(BUNDLED_STAMP)

# Issue 13 (nodejs): Debian's nodejs and npm when `node` is missing, then what the Node.js runtime
# needs from npm (scripts/build-nodejs): the msgpack codec runtimes/nodejs/instance.js speaks the
# frames with, and FunctionGraph's bundled Node.js modules, in build/nodejs/. npm's cache is kept
# outside the checkout (NPM_CACHE), so a rebuild (make clean; make) runs offline.
NODE_BUILD := build/nodejs
NODE_STAMP := $(NODE_BUILD)/.stamp
NPM_CACHE ?= $(HOME)/.cache/fgd/npm

$(NODE_STAMP): runtimes/nodejs/package.json runtimes/nodejs/bundled.json scripts/build-nodejs
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	    PYTHON=$(PYTHON) ./scripts/install-system-packages nodejs npm; fi
	./scripts/build-nodejs $(NODE_BUILD) "$(NPM_CACHE)"
	@touch $@

nodejs: $(NODE_STAMP)

run: $(STAMP) $(PID1) $(SHIMS) $(BUNDLED_STAMP) $(NODE_STAMP)
	@./scripts/run-banner "$(STATE_DIR)" "$(LISTEN)"
	@exec $(BIN)/fgd serve --state-dir "$(STATE_DIR)" --listen "$(LISTEN)"

$(INSTALL_WHEELS): $(STAMP) pyproject.toml
	./scripts/install fetch-wheels --wheelhouse "$(WHEELHOUSE)"
	@touch $@

install:
	./scripts/install install --prefix "$(PREFIX)" --destdir "$(DESTDIR)" --wheelhouse "$(WHEELHOUSE)" $(INSTALL_FLAGS)

uninstall:
	./scripts/install uninstall --prefix "$(PREFIX)" --destdir "$(DESTDIR)" $(INSTALL_FLAGS)

test: $(STAMP) $(PID1) $(SHIMS) $(BUNDLED_STAMP) $(NODE_STAMP) $(INSTALL_WHEELS)
	@PYTHON=$(PYTHON) ./scripts/install-system-packages $(TEST_DEB_PACKAGES)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) $(PID1) $(SHIMS) $(NODE_STAMP)
	@PYTHON=$(PYTHON) ./scripts/install-system-packages wrk
	$(BIN)/python bench/report.py

# Issue 16: the Debian package (debian/, dh; the install step is scripts/install with --destdir),
# built from this checkout with the build host's Debian python3. Output: $(DEB_OUT)/fgd_*.deb.
DEB_OUT ?= build/deb
DEB_BUILD_DEPS := build-essential debhelper dpkg-dev python3-venv python3-dev gcc libc6-dev libcap-dev libseccomp2 ca-certificates nodejs npm

deb:
	@PYTHON=/usr/bin/python3 ./scripts/install-system-packages $(DEB_BUILD_DEPS)
	rm -rf $(DEB_OUT) && mkdir -p $(DEB_OUT)
	@# Everything it writes goes to DEB_OUT, none of it to the checkout's parent directory.
	out=$(abspath $(DEB_OUT)); name=fgd_$$(dpkg-parsechangelog -S Version)_$$(dpkg-architecture -qDEB_HOST_ARCH); \
	FGD_DEB_OUT=$$out dpkg-buildpackage -b -us -uc --buildinfo-option=-u$$out --changes-option=-u$$out \
	    --buildinfo-file=$$out/$$name.buildinfo --changes-file=$$out/$$name.changes
	@ls -l $(DEB_OUT)/*.deb

# Issue 16: boot test of the package in a Debian 12 container (a few minutes; not part of `make test`).
# Builds the .deb inside a bookworm root (its python3), boots a fresh root with systemd-nspawn,
# installs, deploys, invokes, restarts, removes and purges. Transcript: build/test-install.log.
test-install:
	@./scripts/test-install --log build/test-install.log

clean:
	rm -rf $(VENV) .fgd-state .pytest_cache build/bundled $(NODE_BUILD) $(PID1)
