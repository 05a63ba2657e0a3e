#!/bin/bash
# Build the reference QEMU for the interop tests: the Debian 7.2 source as
# Debian ships it, without our baseline patch or series, in build/ref.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
SRC_DIR=$top/build/src
REF=$top/build/ref

"$top/base/fetch-source.sh" >/dev/null
version=$(cat "$SRC_DIR/.debian-version")
if [ "$(cat "$REF/src/.debian-version" 2>/dev/null)" != "$version" ]; then
    echo "reference: copying the Debian source $version"
    rm -rf "$REF/src"
    mkdir -p "$REF/src"
    tar -C "$SRC_DIR" --exclude=./debian --exclude=./.pc -cf - . |
        tar -C "$REF/src" -xf -
fi
TREE=$REF/src BUILD_DIR=$REF/build TARGETS=qemu-system-x86_64 \
    "$top/scripts/build-qemu.sh" | sed -u 's/^build:/reference:/'
exit "${PIPESTATUS[0]}"
