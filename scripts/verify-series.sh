#!/bin/bash
# Check the series as a reviewer receives it: the baseline patch and every
# patch of patches/ apply with git am to a fresh Debian base, and
# scripts/checkpatch.pl passes on each of them.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export TREE=$top/build/verify-tree
. "$top/scripts/common.sh"

rm -rf "$TREE"
FORCE=1 "$top/scripts/make-tree.sh"

fail=0
for p in "$BASE_PATCH_DIR"/0001-*.patch $(series_files); do
    # A warning fails too: checkpatch exits 0 on warnings alone
    if out=$(perl "$TREE/scripts/checkpatch.pl" -q "$p" 2>&1) &&
       ! grep -q '^WARNING' <<< "$out"; then
        echo "verify: checkpatch ok: $(basename "$p")"
    else
        echo "verify: checkpatch FAILED: $(basename "$p")"
        echo "$out" | sed 's/^/    /'
        fail=1
    fi
done
rm -rf "$TREE"
[ "$fail" = 0 ] && echo "verify: the series applies and is checkpatch clean"
exit "$fail"
