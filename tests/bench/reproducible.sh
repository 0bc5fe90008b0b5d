#!/usr/bin/env bash
# Reproducibility benchmark: builds the small Debian image twice under the
# same file name into two folders and prints both sha256s and the 512 KiB
# blocks that differ (of the data blocks: blocks not all zero), as the
# reproducibility issue counts them. With --fresh, a third build bootstraps
# from scratch (--refresh-cache, into a private cache dir) and is compared too.
# Usage: tests/bench/reproducible.sh [--fresh]   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_BUILD_JOBS=1 nice -n 10 cargo build --release -q
bin=$PWD/target/release/imgforge
work=$(mktemp -d /var/tmp/imgforge-repro-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/a" "$work/b" "$work/fresh"
build() { nice -n 10 "$bin" build -o "$1/image.raw" --json "${@:2}" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["sha256"], "seed", s["seed"], "epoch", s["source_date_epoch"], "from_cache", s["bootstrap_from_cache"])'; }
read -r -d '' SUMMARY <<'PY' || true
import json, sys
d = json.load(sys.stdin)
print(f"differing blocks: {d['differing_blocks']} of {d['data_blocks']} data blocks")
for r in d["regions"]:
    files = [f["path"] for f in (r.get("files") or [])[:20]]
    print(f"  {r['name']}: {r['differing_blocks']} of {r['data_blocks']}", *files)
PY
compare() { "$bin" diff "$1" "$2" --json | python3 -c "$SUMMARY"; }
echo "a: $(build "$work/a")"
echo "b: $(build "$work/b")"
compare "$work/a/image.raw" "$work/b/image.raw"
if [[ "${1:-}" == --fresh ]]; then
    echo "fresh: $(build "$work/fresh" --refresh-cache --cache-dir "$work/cache")"
    compare "$work/a/image.raw" "$work/fresh/image.raw"
fi
