#!/bin/bash
# Fetch Debian 12's qemu source package with apt's own tools, verify the
# upstream tarball and unpack it (Debian patches applied) into $SRC_DIR.
#
# Environment:
#   QEMU_DSC              use this already-downloaded .dsc instead of apt
#   QEMU_DEBIAN_VERSION   ask apt for this exact source version
#
# Prints the Debian revision that was used and records it in
# $CACHE_DIR/debian-version.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${CACHE_DIR:-$top/build/cache}
SRC_DIR=${SRC_DIR:-$top/build/src}
ORIG_TARBALL=qemu_7.2+dfsg.orig.tar.xz
ORIG_SHA256=91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f

die() { echo "fetch-source: error: $*" >&2; exit 1; }
say() { echo "fetch-source: $*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Add a deb-src entry for the Debian mirror apt already uses.  The URIs and
# suites are read from the machine's own apt configuration.
have_qemu_source() {
    # No "grep -q": with pipefail, apt-cache's SIGPIPE would fail the pipe.
    [ -n "$(apt-cache showsrc qemu 2>/dev/null | grep '^Package: qemu$')" ]
}

ensure_deb_src() {
    if have_qemu_source; then
        return
    fi
    local out=/etc/apt/sources.list.d/qemu-postcopy-deb-src
    say "no deb-src entry for qemu; deriving one from the apt configuration"
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1 &&
       grep -qs '^Types:.*\bdeb\b' /etc/apt/sources.list.d/*.sources; then
        # deb822: copy every stanza that has "deb", as "deb-src".
        cat /etc/apt/sources.list.d/*.sources |
            awk 'BEGIN { RS = ""; ORS = "\n\n" }
                 /(^|\n)Types:[^\n]*[[:space:]]deb([[:space:]]|$)/ &&
                 /(^|\n)URIs:[^\n]*debian/ {
                     sub(/Types:[^\n]*/, "Types: deb-src"); print }' |
            as_root tee "$out.sources" >/dev/null
    else
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            grep debian | sed 's/^deb /deb-src /' |
            as_root tee "$out.list" >/dev/null
    fi
    as_root apt-get update -qq
    have_qemu_source || die "apt still knows no qemu source package"
}

verify_orig() {
    local f=$1 sum
    [ -f "$f" ] || die "missing upstream tarball $f"
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    [ "$sum" = "$ORIG_SHA256" ] ||
        die "$f: sha256 $sum does not match the expected $ORIG_SHA256"
    say "verified $(basename "$f") (sha256 $ORIG_SHA256)"
}

mkdir -p "$CACHE_DIR"
if [ -n "${QEMU_DSC:-}" ]; then
    [ -f "$QEMU_DSC" ] || die "QEMU_DSC=$QEMU_DSC does not exist"
    dsc=$(cd "$(dirname "$QEMU_DSC")" && pwd)/$(basename "$QEMU_DSC")
else
    dsc=$(ls "$CACHE_DIR"/qemu_*.dsc 2>/dev/null | head -1 || true)
    if [ -z "$dsc" ]; then
        ensure_deb_src
        say "downloading the Debian qemu source package"
        (cd "$CACHE_DIR" &&
         apt-get source -qq --download-only \
             "qemu${QEMU_DEBIAN_VERSION:+=$QEMU_DEBIAN_VERSION}" \
             2>&1 | grep -v 'unsandboxed' || true)
        dsc=$(ls "$CACHE_DIR"/qemu_*.dsc 2>/dev/null | head -1 || true)
        [ -n "$dsc" ] || die "apt-get source did not download a .dsc"
    else
        say "using cached $(basename "$dsc")"
    fi
fi

verify_orig "$(dirname "$dsc")/$ORIG_TARBALL"
version=$(sed -n 's/^Version: //p' "$dsc" | head -1)
[ -n "$version" ] || die "$dsc has no Version field"

if [ -f "$SRC_DIR/.debian-version" ] &&
   [ "$(cat "$SRC_DIR/.debian-version")" = "$version" ]; then
    say "source already unpacked in $SRC_DIR"
else
    rm -rf "$SRC_DIR" "$SRC_DIR.tmp"
    say "unpacking with dpkg-source"
    dpkg-source --no-check -x "$dsc" "$SRC_DIR.tmp" >/dev/null
    mv "$SRC_DIR.tmp" "$SRC_DIR"
    echo "$version" > "$SRC_DIR/.debian-version"
fi
echo "$version" > "$CACHE_DIR/debian-version"
say "Debian qemu source version $version (upstream $(cat "$SRC_DIR/VERSION"))"
