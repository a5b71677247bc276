#!/usr/bin/env bash
# Copy the generated CRDs (crds/, written by `portcullis crds`) into the chart,
# then re-render manifests/install.yaml, which embeds them.
#
#   charts/sync-crds.sh
#
# tests/chart fails when charts/portcullis/crds/ or manifests/install.yaml drift.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/crds"
dst="$repo/charts/portcullis/crds"
python="${PYTHON:-$repo/.venv/bin/python}"

if ! compgen -G "$src/*.yaml" >/dev/null; then
  echo "no CRDs in crds/: generate them first, e.g. portcullis crds > crds/portcullis.dev.yaml" >&2
  exit 1
fi
mkdir -p "$dst"
find "$dst" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \) -delete
cp "$src"/*.yaml "$dst"/
echo "copied $(ls "$src"/*.yaml | wc -l) CRD file(s) into charts/portcullis/crds/"
"$python" "$repo/tests/chart/render_install.py"
