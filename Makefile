# Postcopy recovery for QEMU 7.2: project entry points.
#
#   make demo     build if needed, then run the demo (README's first command)
#   make check    build if needed, then run the tests (README's second)
#
#   make deps     install the Debian packages we need
#   make tree     create build/qemu (pristine + baseline + patches/)
#   make build    configure and build build/qemu
#   make export   export baseline..HEAD of build/qemu to patches/
#   make verify   check that the series applies to a fresh base and is
#                 checkpatch clean
#   make reference  build the reference (unmodified Debian 7.2) QEMU for
#                   the interop tests

SHELL := /bin/bash
TOP := $(CURDIR)
TREE := build/qemu
BIN := $(TREE)/build/qemu-system-x86_64
MIGTEST := $(TREE)/build/tests/qtest/migration-test
DEPS_STAMP := build/.deps-ok

.PHONY: all deps tree build export demo check verify reference clean

all: build

# Cheap check first: only runs apt when a package is missing.
deps:
	@scripts/deps.sh check || scripts/deps.sh

$(DEPS_STAMP):
	@mkdir -p build
	@$(MAKE) --no-print-directory deps
	@touch $@

tree: $(DEPS_STAMP)
	@scripts/make-tree.sh

$(TREE)/.git:
	@$(MAKE) --no-print-directory tree

build: $(DEPS_STAMP) $(TREE)/.git
	@scripts/build-qemu.sh

export:
	@scripts/export-series.sh

# With the series the demo must recover; DEMO_ARGS= to just watch.
DEMO_ARGS ?= --expect recovered

demo: build
	@/usr/bin/python3 demo/postcopy-demo.py --qemu $(BIN) $(DEMO_ARGS)

reference: $(DEPS_STAMP)
	@scripts/build-reference.sh

check: build reference
	@tests/run-tests.sh

verify: $(DEPS_STAMP)
	@scripts/verify-series.sh

clean:
	rm -rf build
