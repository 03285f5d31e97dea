#!/usr/bin/env bash
# Runs the heatmap example against a node: generates the dataset, uploads
# it, deploys the three functions and writes a heatmap to map.png.
#
#   examples/heatmap/run.sh [REGION_JSON]     e.g. '[100, 100, 700, 600]'
#
# The node and token come from SHOAL_URL / SHOAL_TOKEN (or shoal's
# defaults: localhost:7700 and ./.shoal/admin.token). SHOAL: the shoal
# command (default `shoal`); POINTS, TILES: the dataset's size; OUT: the
# image (default map.png). Needs python3 with numpy for the generator.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
read -r -a shoal <<<"${SHOAL:-shoal}"
points=${POINTS:-1000000}
tiles=${TILES:-32}
region=${1:-[100, 100, 700, 600]}
out=${OUT:-map.png}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 "$here/generate.py" --points "$points" --tiles "$tiles" --out "$work/points.bin"
"${shoal[@]}" blobs put heatmap/points.bin "$work/points.bin"
"${shoal[@]}" blobs put heatmap/points.index.json "$work/points.index.json" \
  --content-type application/json
for f in heatmap-part heatmap-reduce heatmap; do
  "${shoal[@]}" deploy "$here/functions/$f"
done
"${shoal[@]}" invoke heatmap "{\"region\": $region, \"width\": 600, \"height\": 500}" -o "$out"
echo "wrote $out"
