#!/usr/bin/env bash
# Starts the MedSegDiff MONAI Label server on the built-in sample datastore (`make serve`).
#
# First start: writes the sample datastore (real scans from installed packages, no download) into
# data/sample_datastore (reference masks in data/sample_reference); later starts reuse it and never
# overwrite a label an annotator saved. Trained checkpoints go to data/sample_datastore/model/.
#
# Environment: PORT (default 8000), HOST (default 127.0.0.1), MODELS (default medsegdiff; e.g.
# "medsegdiff,medsegdiff_3d"), STUDIES (another datastore folder instead of the sample one).
# Extra arguments are passed to `monailabel start_server` (e.g. --conf preload true).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
MODELS=${MODELS:-medsegdiff}
STUDIES=${STUDIES:-data/sample_datastore}

if [ ! -x .venv/bin/monailabel ]; then
  echo "[serve] .venv is missing: run 'bash scripts/setup.sh' (or 'make serve') first" >&2
  exit 1
fi

if [ "$STUDIES" = "data/sample_datastore" ]; then
  echo "[serve] sample datastore: $STUDIES"
  .venv/bin/python -m medsegdiff.sample_data build "$STUDIES"
fi

# .venv/bin/monailabel runs `python -m monailabel.main` with the python on PATH unless told otherwise
export MONAILABEL_PYEXE=${MONAILABEL_PYEXE:-$PWD/.venv/bin/python}
echo "[serve] MONAI Label on http://$HOST:$PORT (models: $MODELS); stop with Ctrl+C"
exec .venv/bin/monailabel start_server \
  --app monailabel_app \
  --studies "$STUDIES" \
  --conf models "$MODELS" \
  --host "$HOST" --port "$PORT" \
  "$@"
