# Shared settings for the project's scripts (sourced, not run).
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TREE=${TREE:-$top/build/qemu}
SRC_DIR=$top/build/src
BASE_PATCH_DIR=$top/base
SERIES_DIR=$top/patches
GIT_IDENT=(-c user.name="Postcopy Recovery Developers"
           -c user.email="postcopy-recovery@example.org")

series_files() {
    ls "$SERIES_DIR"/[0-9][0-9][0-9][0-9]-*.patch 2>/dev/null |
        grep -v '/0000-cover-letter.patch$' || true
}

# Stable patch ids of a list of commits / of the files in patches/.
tree_patch_ids() {
    git -C "$TREE" rev-list --reverse baseline..HEAD | while read -r c; do
        git -C "$TREE" show "$c" | git patch-id --stable | cut -d' ' -f1
    done | sort
}
file_patch_ids() {
    series_files | while read -r p; do
        git patch-id --stable < "$p" | cut -d' ' -f1
    done | sort
}
