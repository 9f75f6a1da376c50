#!/usr/bin/env bash
# Turns the Google Benchmark JSON output of seqpar_traffic_bench (or of its _gpu, _mpi and _nccl
# variants) into two plots of the bytes_per_rank counter (everything one rank sends in a layer's
# forward exchange: the traffic over that GPU's link, the unit of the formulas in docs/architecture.md) for every
# method, at H = 8, D = 64:
#   traffic_vs_S.png  against S at P = 8
#   traffic_vs_P.png  against P at S / P = 8K tokens (sequence and GPUs grow together)
# Usage: scripts/plot_traffic.sh traffic.json [output folder, default docs] [counter, default bytes_per_rank]
# (the counter may also be bytes_per_peer: the most a rank sends to one peer)
# Produce the JSON with:
#   build/bench/seqpar_traffic_bench --benchmark_min_time=0.01 \
#     --benchmark_out=traffic.json --benchmark_out_format=json
# Needs jq and gnuplot; installs them with apt-get when missing.
set -euo pipefail
json=$1
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
counter=${3:-bytes_per_rank}
missing=""
command -v jq >/dev/null || missing="$missing jq"
command -v gnuplot >/dev/null || missing="$missing gnuplot-nox"
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  # shellcheck disable=SC2086  # one word per package
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Each run is named BM_<method>/S:<S>/P:<P>/H:<H>/D:<D>/<time kind>; jq prints
# "method S P H D bytes" per run (aggregates of repetitions left out), awk sorts them into files.
jq -r --arg counter "$counter" '
  .benchmarks[]
  | select((.run_type // "iteration") == "iteration" and has($counter))
  | (.name | capture("^BM_(?<m>[A-Za-z0-9_]+)/S:(?<S>[0-9]+)/P:(?<P>[0-9]+)/H:(?<H>[0-9]+)/D:(?<D>[0-9]+)")) as $n
  | [$n.m, $n.S, $n.P, $n.H, $n.D, .[$counter]] | map(tostring) | join(" ")' "$json" |
  awk -v dir="$tmp" '
    $4 == 8 && $5 == 64 {
      if ($3 == 8) print $2, $6 > (dir "/S_" $1 ".dat")
      if ($2 / $3 == 8192) print $3, $6 > (dir "/P_" $1 ".dat")
    }'
for f in "$tmp"/*.dat; do
  [ -e "$f" ] || { echo "no run at H = 8, D = 64 in $json" >&2; exit 1; }
  sort -n -o "$f" "$f"
done

methods="ulysses_forward ulysses_inverse lasp_chain lasp2_all_gather megatron_sp ring_attention ulysses_ring_u2
ulysses_ring_u4 ulysses_ring_u8"
colors=(9400d3 009e73 56b4e9 e69f00 f0e442 0072b2 e51e10 000000 a0522d)
plot_lines() {  # $1: S or P; one colour per method, every second line dashed
  local first=1 dash=2 i=0
  for m in $methods; do
    dash=$((3 - dash)) i=$((i + 1))
    [ -s "$tmp/$1_$m.dat" ] || continue
    [ $first -eq 1 ] || printf ', '
    printf '"%s" using 1:2 with linespoints linewidth 2 dashtype %d linecolor rgb "#%s" pointtype %d title "%s"' \
      "$tmp/$1_$m.dat" $dash "${colors[i - 1]}" $i "${m//_/ }"
    first=0
  done
}
if [ "$counter" = bytes_per_rank ]; then
  ylabel="bytes over each GPU's link per layer (all a rank sends, forward)" what="Bytes per link"
elif [ "$counter" = bytes_per_peer ]; then
  ylabel="most bytes a rank sends to one peer per layer (forward)" what="Bytes per peer"
else
  ylabel="$counter per layer (forward)" what=$counter
fi
gnuplot <<GNUPLOT
set terminal pngcairo size 1100,600 noenhanced
set grid
set logscale y 2
set key outside right
set format y "%.0s %cB"
set offsets 0, 0, graph 0.05, graph 0.05
set ylabel "$ylabel"
set output "$out/traffic_vs_S.png"
set title "$what against sequence length, P = 8, H = 8, D = 64, bf16"
set logscale x 2
set xlabel "S (tokens in total)"
plot $(plot_lines S)
set output "$out/traffic_vs_P.png"
set title "$what against P at S / P = 8K tokens (the sequence grows with the GPUs)"
unset logscale x
set xlabel "P (ranks)"
set xtics (2, 4, 8, 16)
plot $(plot_lines P)
GNUPLOT
echo "wrote $out/traffic_vs_S.png and $out/traffic_vs_P.png"
