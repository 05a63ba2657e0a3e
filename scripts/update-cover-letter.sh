#!/bin/bash
# Refresh the generated part of patches/0000-cover-letter.patch: the patch
# count in the subject, the shortlog and the diffstat.  The text above the
# "-- shortlog --" marker is written by hand and kept.
set -euo pipefail
. "$(dirname "$0")/common.sh"
cover=$SERIES_DIR/0000-cover-letter.patch
n=$(git -C "$TREE" rev-list --count baseline..HEAD)
text=$(sed '/^-- shortlog --$/,$d' "$cover" |
       sed "s|^Subject: \[PATCH 0/[0-9]*\]|Subject: [PATCH 0/$n]|")
{
    printf '%s\n' "$text"
    echo "-- shortlog --"
    git -C "$TREE" shortlog baseline..HEAD | sed 's/^      /  /'
    git -C "$TREE" diff --stat baseline..HEAD
} > "$cover"
echo "cover letter: $n patches"
