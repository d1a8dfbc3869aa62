# One-command setup on a fresh Debian 12 machine (as root): every target installs
# what is missing first and is safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bhcore-installed
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
APT_PACKAGES := python3 python3-venv python3-dev gcc make \
	source-extractor psfex scamp swarp wcstools astrometry.net \
	astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian \
	astrometry-data-tycho2-10-19-littleendian iraf iraf-noao \
	chromium chromium-driver postgresql
export DEBIAN_FRONTEND := noninteractive

.PHONY: install engines venv demo test bench clean-venv

install: engines venv

engines:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing engines: $$missing"; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else echo "engines: all present"; fi

venv: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	@touch $(STAMP)

demo: install
	$(BIN)/bhcore demo --out demo-out

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
