#!/usr/bin/env bash
# Build the wheel every ALICE builder installs with `pip install`: the alitx
# binary linked against glibc 2.17 (manylinux2014: slc7, slc8, AlmaLinux 9,
# Ubuntu) and the aliBuild helper `alibuild-alitx`, into dist/.
#
# Usage: scripts/wheel.sh
#
# Everything comes from PyPI into .venv-wheel: maturin, the `ziglang`
# package (zig links against glibc 2.17 with no older system at hand) and
# auditwheel, which must call the wheel manylinux_2_17 compatible. Needs
# only the Rust toolchain and Python 3 (with venv). The build compiles alitx
# and its dependencies once more, for zig's x86_64-unknown-linux-gnu with
# glibc 2.17, in target/wheel (or $CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.venv-wheel
requirements=(maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2)
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
"$tools/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"

# maturin finds zig as `python3 -m ziglang`: the venv's Python first.
export PATH="$PWD/$tools/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/wheel}
rm -rf dist
start=$SECONDS
"$tools/bin/maturin" build --release --zig --compatibility manylinux2014 --out dist
elapsed=$((SECONDS - start))

wheel=$(echo dist/alitx-*.whl)
"$tools/bin/auditwheel" show "$wheel" | tee dist/auditwheel.txt
# auditwheel wraps its lines: join them before looking for the tag.
if ! tr -s ' \n' ' ' <dist/auditwheel.txt | grep -q 'is consistent with the following platform tag: "manylinux_2_17_x86_64"'; then
  echo "wheel.sh: auditwheel does not call $wheel manylinux_2_17 compatible" >&2
  exit 1
fi
rm dist/auditwheel.txt
echo "wheel.sh: $wheel ($(du -k "$wheel" | cut -f1) KiB) built in ${elapsed}s"
