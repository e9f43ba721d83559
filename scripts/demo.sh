#!/usr/bin/env bash
# Publish the embedded example aliBuild work dir (examples/sw-example.tar.gz:
# defaults-release, zlibx <- midx <- topx, as aliBuild 1.17.48 left them) to
# a local-directory store, show what was written, and show that a second
# run writes nothing. No server needed.
# Usage: scripts/demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/release/alitx ]; then
  echo "First run: compiling alitx and its dependencies in release mode, about 5 minutes"
  echo "on 2 cores (later runs only rebuild what changed). Cargo's progress follows."
fi
cargo build --release
alitx=$PWD/target/release/alitx
out=$(realpath -m "${1:-$(mktemp -d /tmp/alitx-demo.XXXXXX)}")
mkdir -p "$out"
tar xzf examples/sw-example.tar.gz -C "$out"
sw=$out/sw store=$out/store arch=slc9_x86-64

# A new local store is started only when named as a file:// URL (a bare
# path must exist). Package links name every built revision; upload those with fewer
# dependencies (dist links) first, as aliBuild does.
links=$(cd "$sw/TARS/$arch" && for link in */*.tar.gz; do
          echo "$(find "dist/${link%%/*}" -type l | wc -l) $link"; done | sort -n | cut -d' ' -f2)
for link in $links; do
  pkg=${link%%/*}
  verrev=${link#*/$pkg-}; verrev=${verrev%.$arch.tar.gz}
  hash=$(basename "$(dirname "$(readlink "$sw/TARS/$arch/$link")")")
  echo "+ alitx upload --package $pkg --version ${verrev%-*} --revision ${verrev##*-} --hash $hash"
  "$alitx" upload --work-dir "$sw" --architecture "$arch" --package "$pkg" \
    --version "${verrev%-*}" --revision "${verrev##*-}" --hash "$hash" --remote-store "file://$store"
done

echo
echo "The store $store now holds:"
(cd "$store" && find TARS \( -type l -printf '  %p -> %l\n' \) -o \( -type f -printf '  %p (%s bytes)\n' \) | sort)
echo
echo "Uploading topx again writes nothing:"
"$alitx" upload --work-dir "$sw" --architecture "$arch" --package topx --version v3.0 --revision 1 \
  --hash d142077c0c23b6270c09b4a8333c6f0796a59426 --remote-store "$store"
