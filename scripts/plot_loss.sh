#!/usr/bin/env bash
# Plots the loss curves that train_tiny_lm --log wrote (CSV lines: attention,dp,sp,step,loss):
# one panel per attention kind, every DP x SP mesh overlaid on the one-rank run.
# Usage: scripts/plot_loss.sh loss.csv [output png, default docs/train_tiny_lm_loss.png]
# Needs gnuplot; installs it with apt-get when missing.
set -euo pipefail
csv=$1
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs/train_tiny_lm_loss.png}
if ! command -v gnuplot >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnuplot-nox
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One file per (attention, mesh): "step loss".
awk -F, -v dir="$tmp" 'NF == 5 { print $4, $5 > (dir "/" $1 "_" $2 "x" $3 ".dat") }' "$csv"
kinds=""
for k in ulysses lasp ring2d; do
  ls "$tmp/${k}_"*.dat >/dev/null 2>&1 && kinds="$kinds $k"
done
[ -n "$kinds" ] || { echo "no loss lines in $csv" >&2; exit 1; }
n=$(echo $kinds | wc -w)
{
  echo "set terminal pngcairo size $((520 * n)),440 font 'Sans,10'"
  echo "set output '$out'"
  echo "set multiplot layout 1,$n title 'train\\_tiny\\_lm: loss per step, one rank and every DP x SP mesh (lines overlap when the runs agree)'"
  echo "set xlabel 'step'; set ylabel 'loss (nats per byte)'; set grid; set key top right"
  for k in $kinds; do
    echo "set title '$k'"
    plot="plot"
    sep=" "
    dash=1
    for f in "$tmp/${k}_"*.dat; do
      mesh=$(basename "$f" .dat); mesh=${mesh#"${k}_"}
      plot="$plot$sep'$f' using 1:2 with lines linewidth 2 dashtype $dash title 'dp x sp = $mesh'"
      sep=", "
      dash=$((dash + 1))
    done
    echo "$plot"
  done
  echo "unset multiplot"
} | gnuplot
echo "wrote $out"
