#!/bin/bash
# Configure (once) and build build/qemu for what the project needs:
# x86_64-softmmu with TCG, slirp, gnutls and the qtests, nothing else.
# Firmware comes from Debian's seabios, ipxe-qemu and qemu-system-data
# packages, linked into the build's qemu-bundle so that the built binary
# finds bios-256k.bin and the option ROMs.
#
# TREE (default build/qemu), BUILD_DIR (default $TREE/build), TARGETS and
# EXTRA_CONFIGURE let the reference and sanitizer builds share this script.
set -euo pipefail
. "$(dirname "$0")/common.sh"

BUILD_DIR=${BUILD_DIR:-$TREE/build}
read -r -a TARGETS <<< "${TARGETS:-qemu-system-x86_64 tests/qtest/migration-test tests/qtest/qmp-test tests/qtest/test-hmp tests/unit/test-bitmap-rle}"

[ -f "$TREE/configure" ] || { echo "build: no tree in $TREE; run make tree" >&2; exit 1; }

# Share compiled objects between the work tree and the reference build:
# relative paths in the hash, not the build directory.
export CCACHE_BASEDIR=$top/build CCACHE_NOHASHDIR=1
mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"

# QEMU's configure gives meson an explicit compiler, so meson does not add
# ccache by itself: ask for it.
cc=cc
if command -v ccache >/dev/null; then
    cc="ccache cc"
fi
args="--cc=$cc ${EXTRA_CONFIGURE:-}"
if [ -f build.ninja ] && [ "$(cat .configure-args 2>/dev/null)" != "$args" ]; then
    echo "build: configure arguments changed: configuring $BUILD_DIR anew"
    find . -mindepth 1 -delete
fi
if [ ! -f build.ninja ]; then
    echo "build: configuring $BUILD_DIR"
    # Debian's meson with Debian's python: not a python from PATH.
    PATH=/usr/bin:$PATH "$TREE/configure" \
        --target-list=x86_64-softmmu \
        --without-default-features \
        --enable-system --disable-user --enable-tcg \
        --enable-slirp --enable-gnutls --enable-fdt=system \
        --disable-docs --meson=meson --with-git-submodules=ignore \
        --cc="$cc" ${EXTRA_CONFIGURE:-} > configure.log 2>&1 || {
        tail -30 configure.log >&2
        echo "build: configure failed (log: $BUILD_DIR/configure.log)" >&2
        exit 1
    }
    echo "$args" > .configure-args
fi

echo "build: ninja ${TARGETS[*]}"
# One line of progress every 100 steps, not thousands of lines.
PATH=/usr/bin:$PATH ninja -j"$(nproc)" "${TARGETS[@]}" 2>&1 |
    awk '/^\[[0-9]+\/[0-9]+\]/ { split($1, a, /[\[\/\]]/);
                                  if (a[2] % 100 == 0 || a[2] == a[3])
                                      { print "build: " $1; fflush() }; next }
         { print; fflush() }'
[ "${PIPESTATUS[0]}" = 0 ] || { echo "build: ninja failed" >&2; exit 1; }

bundle=$BUILD_DIR/qemu-bundle/usr/local/share/qemu
mkdir -p "$bundle"
for f in /usr/share/seabios/*.bin /usr/lib/ipxe/qemu/*.rom \
         /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin; do
    [ -e "$f" ] && ln -sf "$f" "$bundle/"
done
[ -e "$bundle/bios-256k.bin" ] ||
    { echo "build: bios-256k.bin missing (install seabios)" >&2; exit 1; }
echo "build: done ($BUILD_DIR/qemu-system-x86_64)"
