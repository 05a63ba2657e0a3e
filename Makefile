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
#   make asan     ASan+UBSan build of build/qemu, postcopy tests on it
#   make reference  build the reference (unmodified Debian 7.2) QEMU for
#                   the interop tests
#   make guest    build the test guest (Debian's kernel, busybox, memcheck)
#   make bench    measure detection, recovery, stall, switchover downtime,
#                 recovery bytes and no-failure overhead, ours next to the
#                 reference QEMU 7.2; table, JSON and figure in build/
#                 (QUICK=1: one repetition)
#   make demo-libvirt  libvirt resumes a postcopy migration between two
#                 libvirt hosts on this machine (root)

SHELL := /bin/bash
TOP := $(CURDIR)
TREE := build/qemu
BIN := $(TREE)/build/qemu-system-x86_64
MIGTEST := $(TREE)/build/tests/qtest/migration-test
DEPS_STAMP := build/.deps-ok

.PHONY: all deps tree build export demo demo-libvirt check verify reference guest bench asan clean

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

demo-libvirt: build guest
	@/usr/bin/python3 demo/libvirt-demo.py --qemu $(BIN) $(LIBVIRT_DEMO_ARGS)

reference: $(DEPS_STAMP)
	@scripts/build-reference.sh

guest: $(DEPS_STAMP)
	@guest/build-guest.sh

check: build reference guest
	@tests/run-tests.sh

BENCH_REPS := $(if $(QUICK),1,3)
bench: build reference
	@/usr/bin/python3 bench/recovery-bench.py --reps $(BENCH_REPS)

# AddressSanitizer + UndefinedBehaviorSanitizer build, postcopy tests on it.
# Leak detection is off: QEMU 7.2 leaks at exit outside migration.
# QEMU 7.2's configure probe for UBSan fails with GCC 12 (its test program
# trips -Wmaybe-uninitialized under -Werror), so UBSan is asked for
# explicitly.
ASAN_BUILD := $(TOP)/$(TREE)/build-asan
ASAN_CONFIGURE := --enable-sanitizers --extra-cflags=-fsanitize=undefined \
	--extra-ldflags=-fsanitize=undefined
asan: $(DEPS_STAMP) $(TREE)/.git
	@BUILD_DIR=$(ASAN_BUILD) EXTRA_CONFIGURE="$(ASAN_CONFIGURE)" \
		scripts/build-qemu.sh
	@ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1 \
		tests/run-tests.sh --build $(ASAN_BUILD) -s migration-test \
		-p /x86_64/migration/postcopy

verify: $(DEPS_STAMP)
	@scripts/verify-series.sh

clean:
	rm -rf build
