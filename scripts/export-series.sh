#!/bin/bash
# Export baseline..HEAD of build/qemu to patches/ as git format-patch files
# with stable names and no version noise.  The cover letter is kept.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ -d "$TREE/.git" ] || { echo "export: no work tree; run make tree" >&2; exit 1; }
if [ -n "$(git -C "$TREE" status --porcelain --untracked-files=no)" ]; then
    echo "export: build/qemu has uncommitted changes; commit them first" >&2
    exit 1
fi
mkdir -p "$SERIES_DIR"
series_files | xargs -r rm -f
n=$(git -C "$TREE" rev-list --count baseline..HEAD)
if [ "$n" -gt 0 ]; then
    git -C "$TREE" format-patch -q --zero-commit --no-signature \
        --subject-prefix=PATCH -o "$SERIES_DIR" baseline..HEAD
fi
echo "export: $n patches in patches/"
