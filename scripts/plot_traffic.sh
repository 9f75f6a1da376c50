#!/usr/bin/env bash
# Turns the CSV output of seqpar_traffic_bench into two plots:
#   traffic_vs_S.png  bytes each rank sends per layer against S for every method at P = 8
#   traffic_vs_P.png  the same against P at S / P = 8K tokens (sequence and GPUs grow together)
# (bytes per rank are the formulas' unit in DESIGN.md; the CSV also holds the most bytes sent over
# one link, bytes_per_link)
# Usage: scripts/plot_traffic.sh traffic.csv [output folder, default docs]
# Produce the CSV with:
#   build/bench/seqpar_traffic_bench --benchmark_min_time=0.01 \
#     --benchmark_out=traffic.csv --benchmark_out_format=csv
set -euo pipefail
csv=$1
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
if ! command -v gnuplot >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnuplot-nox
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Rows look like: "BM_<method>/S:<S>/P:<P>/H:8/D:64/real_time",...; the bytes_per_rank column is
# found by name in the header.
awk -F, -v dir="$tmp" '
  /^name,/ { for (i = 1; i <= NF; ++i) { gsub(/"/, "", $i); col[$i] = i }; next }
  /^"BM_/ {
    name = $1; gsub(/"/, "", name)
    split(name, part, "/"); method = substr(part[1], 4)
    S = substr(part[2], 3); P = substr(part[3], 3)
    bytes = $col["bytes_per_rank"]
    if (P == 8) print S, bytes > (dir "/S_" method ".dat")
    if (S / P == 8192) print P, bytes > (dir "/P_" method ".dat")
  }' "$csv"
for f in "$tmp"/*.dat; do sort -n -o "$f" "$f"; done

methods="ulysses_forward ulysses_inverse lasp_chain lasp2_all_gather megatron_sp ring_attention"
plot_lines() {  # $1: S or P
  local first=1
  for m in $methods; do
    [ -s "$tmp/$1_$m.dat" ] || continue
    [ $first -eq 1 ] || printf ', '
    printf '"%s" using 1:2 with linespoints title "%s"' "$tmp/$1_$m.dat" "${m//_/ }"
    first=0
  done
}
gnuplot <<GNUPLOT
set terminal pngcairo size 900,600 noenhanced
set grid
set key top left
set logscale y 2
set format y "%.0s %cB"
set offsets 0, 0, graph 0.05, graph 0.05
set ylabel "bytes each rank sends per layer (forward)"
set output "$out/traffic_vs_S.png"
set title "Bytes per rank against sequence length, P = 8, H = 8, D = 64, bf16"
set logscale x 2
set xlabel "S (tokens in total)"
plot $(plot_lines S)
set output "$out/traffic_vs_P.png"
set title "Bytes per rank against P at S / P = 8K tokens (the sequence grows with the GPUs)"
unset logscale x
set xlabel "P (ranks)"
set xtics (2, 4, 8)
plot $(plot_lines P)
GNUPLOT
echo "wrote $out/traffic_vs_S.png and $out/traffic_vs_P.png"
