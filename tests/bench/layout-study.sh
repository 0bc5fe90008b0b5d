#!/usr/bin/env bash
# Issue 12, part 3 (a layout that stays put): how many 512 KiB blocks of the
# root filesystem a change moves, two ways.
#   mkfs    the child as imgforge builds it today (`mkfs.ext4 -d` anew);
#   applied the parent's root filesystem, copied, with the tree difference
#           applied by debugfs (libext2fs's allocator: unchanged files keep
#           their blocks, new ones go to free space), E2FSPROGS_FAKE_TIME set.
# Also checks that the applied filesystem holds the child's tree (content,
# modes, symlinks; rdump does not keep owners or xattrs, so those are not
# compared) and passes e2fsck, and that applying twice gives the same bytes.
# A study, not a feature: imgforge does not build this way yet.
#
# Usage: tests/bench/layout-study.sh PARENT.raw CHILD.raw   (root; two images
# built by imgforge, e.g. by `BENCH_BUILD=1 BENCH_WORK=DIR tests/bench/delta.sh`:
# DIR/base.raw and DIR/htop.raw)
set -euo pipefail
parent=$1 child=$2
work=$(mktemp -d /var/tmp/imgforge-layout.XXXXXX)
trap 'rm -rf "$work"' EXIT

root_fs() { # IMAGE OUT: the root partition (GPT name "root") as a file
    local start end
    read -r start end < <(sgdisk -p "$1" | awk '$NF == "root" {print $2, $3}')
    dd if="$1" of="$2" bs=512 skip="$start" count=$((end - start + 1)) conv=sparse status=none
}
root_fs "$parent" "$work/parent.ext4"
root_fs "$child" "$work/child.ext4"
for name in parent child; do
    mkdir "$work/$name.tree"
    debugfs -R "rdump / $work/$name.tree" "$work/$name.ext4" >/dev/null 2>&1
done

# A tree as path -> ((kind, content digest or link target), mode).
cat >"$work/tree.py" <<'PY'
import hashlib, os, stat
def walk(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = ("l", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("f", hashlib.sha256(open(p, "rb").read()).hexdigest())
            else:
                what = ("d" if stat.S_ISDIR(st.st_mode) else "o", None)
            out["/" + os.path.relpath(p, root)] = (what, st.st_mode)
    return out
PY

# The tree difference as a debugfs script (parents before children).
PYTHONPATH=$work python3 - "$work/parent.tree" "$work/child.tree" >"$work/apply.debugfs" <<'PY'
import sys
from tree import walk
parent, child = walk(sys.argv[1]), walk(sys.argv[2])
# Removed (and replaced) entries, deepest first.
for path in sorted(set(parent) - set(child), key=lambda p: -p.count("/")):
    print(("rmdir" if parent[path][0][0] == "d" else "rm") + f' "{path}"')
for path in sorted(child):
    (kind, value), mode = child[path]
    if path in parent:
        if parent[path] == child[path]:
            continue
        if parent[path][0][0] != "d":
            print(f'rm "{path}"')
    if kind == "d" and path not in parent:
        print(f'mkdir "{path}"')
    elif kind == "l":
        print(f'symlink "{path}" "{value}"')
        continue
    elif kind == "f":
        print(f'write "{sys.argv[2]}{path}" "{path}"')
    print(f'sif "{path}" mode 0{mode:o}')
PY

apply() { # OUT
    cp --sparse=always "$work/parent.ext4" "$1"
    E2FSPROGS_FAKE_TIME=$(date +%s -d 2026-01-01) debugfs -w -f "$work/apply.debugfs" "$1" >/dev/null 2>&1
}
apply "$work/applied.ext4"
apply "$work/applied-again.ext4"

python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
B = 512 * 1024
def blocks(a, b):
    data = diff = 0
    zero = bytes(B)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(B), fb.read(B)
            if not x and not y:
                return diff, data
            data += y != zero
            diff += x != y
for name in ("child", "applied"):
    diff, data = blocks(f"{work}/parent.ext4", f"{work}/{name}.ext4")
    label = "mkfs" if name == "child" else "applied"
    print(f"{label:8} {diff:5} of {data} data blocks of the root filesystem differ from the parent's ({100 * diff / max(data, 1):.2f} %)")
PY
echo "changes applied: $(grep -c -v '^sif' "$work/apply.debugfs") debugfs commands"
cmp -s "$work/applied.ext4" "$work/applied-again.ext4" && echo "applied twice: identical" || echo "applied twice: DIFFER"
e2fsck -fn "$work/applied.ext4" >/dev/null 2>&1 && echo "e2fsck -fn: clean" || echo "e2fsck -fn: ERRORS"
mkdir "$work/applied.tree"
debugfs -R "rdump / $work/applied.tree" "$work/applied.ext4" >/dev/null 2>&1
PYTHONPATH=$work python3 - "$work/child.tree" "$work/applied.tree" <<'PY'
import sys
from tree import walk
child, applied = walk(sys.argv[1]), walk(sys.argv[2])
differing = sorted(p for p in set(child) | set(applied) if child.get(p) != applied.get(p))
print("applied tree = child tree (content, modes, symlinks)" if not differing
      else f"applied tree differs from the child's in {len(differing)} entries: {differing[:5]}")
PY
