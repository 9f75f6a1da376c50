#!/usr/bin/env bash
# Sets up and builds train_tiny_lm, then the full parity run: for each attention kind, the
# one-rank model and the DP x SP meshes 1x2, 1x4 and 2x2 (in-process ranks), STEPS steps each
# (default 300), every step's loss checked against one rank's; the losses go to LOG (default
# build/train_tiny_lm_loss.csv) and their plot to docs/train_tiny_lm_loss.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
steps=${STEPS:-300}
log=${LOG:-$build/train_tiny_lm_loss.csv}
"$root/scripts/setup.sh"
cmake --build "$build" --target train_tiny_lm
rm -f "$log"
status=0
for kind in ulysses lasp ring2d; do
  "$build/examples/train_tiny_lm" --attention "$kind" --steps "$steps" --parity 1x2,1x4,2x2 --log "$log" || status=1
done
"$root/scripts/plot_loss.sh" "$log"
exit $status
