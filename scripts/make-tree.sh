#!/bin/bash
# Create the work tree build/qemu: the pristine Debian source as the first
# commit, the baseline patch as a commit tagged "baseline", then the series
# from patches/ applied with git am.
#
# Does nothing when the tree already matches patches/.  When patches/
# changed (e.g. after a pull) and the tree holds no work of its own, the
# tree is made anew.  Refuses to replace a tree holding work that is not
# exported (uncommitted changes, or commits made since the tree was
# created), unless FORCE=1.
set -euo pipefail
. "$(dirname "$0")/common.sh"

say() { echo "make-tree: $*"; }
die() { echo "make-tree: error: $*" >&2; exit 1; }

if [ -d "$TREE/.git" ] &&
   git -C "$TREE" rev-parse -q --verify baseline >/dev/null; then
    dirty=$(git -C "$TREE" status --porcelain --untracked-files=no)
    if [ -z "$dirty" ] && [ "$(tree_patch_ids)" = "$(file_patch_ids)" ]; then
        say "${TREE#$top/} is up to date with patches/"
        exit 0
    fi
    applied=$(cat "$TREE/.git/applied-series" 2>/dev/null || true)
    if [ -z "$dirty" ] && [ "$(tree_patch_ids)" = "$applied" ]; then
        say "patches/ changed and build/qemu holds no work of its own:" \
            "making it anew"
    elif [ "${FORCE:-0}" != 1 ]; then
        [ -n "$dirty" ] && echo "$dirty" >&2
        die "build/qemu holds work that is not in patches/ (uncommitted" \
            "changes or commits not exported). Run 'make export' first," \
            "or FORCE=1 to throw it away."
    else
        say "FORCE=1: replacing build/qemu"
    fi
fi

"$top/base/fetch-source.sh"
version=$(cat "$SRC_DIR/.debian-version")

rm -rf "$TREE.tmp"
mkdir -p "$TREE.tmp"
say "copying the Debian source (without debian/ and .pc/)"
tar -C "$SRC_DIR" --exclude=./debian --exclude=./.pc \
    --exclude=./.debian-version -cf - . | tar -C "$TREE.tmp" -xf -

g() { git -C "$TREE.tmp" "${GIT_IDENT[@]}" "$@"; }
g init -q -b master
# Extra build directories (build-asan) are not part of the source
echo "/build-*/" >> "$TREE.tmp/.git/info/exclude"
g add -A -f
g commit -q -m "Debian qemu $version, pristine (upstream $(cat "$SRC_DIR/VERSION"))"
g tag pristine
say "applying the baseline patch"
g am -q "$BASE_PATCH_DIR"/0001-*.patch
g tag baseline
n=$(series_files | wc -l)
if [ "$n" -gt 0 ]; then
    say "applying the series ($n patches)"
    # shellcheck disable=SC2046
    g am -q $(series_files)
fi
(cd "$TREE.tmp" && TREE=$TREE.tmp tree_patch_ids) > "$TREE.tmp/.git/applied-series"
# Keep an existing build directory: incremental builds stay fast.
if [ -d "$TREE/build" ]; then
    mv "$TREE/build" "$TREE.tmp/build"
fi
rm -rf "$TREE"
mv "$TREE.tmp" "$TREE"
say "${TREE#$top/} ready: $(git -C "$TREE" log --oneline baseline..HEAD | wc -l)" \
    "series commits on top of baseline"
