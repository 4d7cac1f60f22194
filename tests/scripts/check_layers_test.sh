#!/usr/bin/env bash
# ctest "layers.*": scripts/check-layers passes on the tree, and fails naming file:line on a
# planted include that points up; the per-layer include roots of the build refuse the same
# include at compile time.
#   check_layers_test.sh SOURCE_DIR BINARY_DIR CXX
set -euo pipefail
src=$1 bin=$2 cxx=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$src/scripts/check-layers" "$src"

# A copy of the tree's layer folders with one wrong include planted in common/ and one in worker/.
for d in common protocols coordinator worker app cli; do cp -r "$src/$d" "$tmp/$d"; done
printf '#pragma once\n\n#include "protocols/messages.h"\n' > "$tmp/common/planted.h"
printf '#include "worker/worker.h"\n#include "coordinator/coordinator.h"\n' > "$tmp/worker/planted.cc"
if "$src/scripts/check-layers" "$tmp" 2> "$tmp/out.txt"; then
  echo "FAIL: check-layers passed a tree with planted wrong includes"; exit 1
fi
grep -q '^common/planted.h:3: common/ must not include protocols/' "$tmp/out.txt" ||
  { echo "FAIL: common/planted.h:3 not reported"; cat "$tmp/out.txt"; exit 1; }
grep -q '^worker/planted.cc:2: worker/ must not include coordinator/' "$tmp/out.txt" ||
  { echo "FAIL: worker/planted.cc:2 not reported"; cat "$tmp/out.txt"; exit 1; }
grep -q 'worker/planted.cc:1' "$tmp/out.txt" && { echo "FAIL: a permitted include was reported"; exit 1; }

# The build: with only the common layer's include root, an include of protocols/ does not compile
# while one of common/ does.
mkdir -p "$tmp/probe"
printf '#include "common/errors.h"\nint main() { return 0; }\n' > "$tmp/probe/ok.cc"
printf '#include "protocols/strategy.h"\nint main() { return 0; }\n' > "$tmp/probe/up.cc"
"$cxx" -std=c++17 -fsyntax-only -I "$bin/layers/common" "$tmp/probe/ok.cc"
if "$cxx" -std=c++17 -fsyntax-only -I "$bin/layers/common" "$tmp/probe/up.cc" 2>/dev/null; then
  echo "FAIL: the common layer's include root lets protocols/ in"; exit 1
fi
echo "layers: check-layers and the build both refuse includes that point up"
