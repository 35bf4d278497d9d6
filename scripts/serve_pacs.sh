#!/usr/bin/env bash
# Starts a local Orthanc PACS (DICOMweb) filled with the sample heads, then the MedSegDiff server on it
# (`make serve-pacs`). Stopping the server (Ctrl+C) stops Orthanc too; its storage stays in data/pacs/.
#
# First start: builds data/sample_datastore (as `make serve`), converts its heads into DICOM MR series and
# stores them in Orthanc, with a real MR series from pydicom's test files (stored once: the UIDs are fixed).
# Final labels saved from Slicer go to Orthanc as DICOM SEG; the app's download cache and trained checkpoints
# are in data/pacs/dicomweb_cache and data/pacs/model.
#
# Environment: PORT / HOST / MODELS as for `make serve`; ORTHANC_HTTP_PORT (default 8042), ORTHANC_DICOM_PORT
# (default 4242). Extra arguments are passed to `monailabel start_server`.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
MODELS=${MODELS:-medsegdiff}
ORTHANC_HTTP_PORT=${ORTHANC_HTTP_PORT:-8042}
ORTHANC_DICOM_PORT=${ORTHANC_DICOM_PORT:-4242}
PACS_ROOT=$PWD/data/pacs

if [ ! -x .venv/bin/monailabel ]; then
  echo "[serve-pacs] .venv is missing: run 'bash scripts/setup.sh' (or 'make serve-pacs') first" >&2
  exit 1
fi

.venv/bin/python -m medsegdiff.sample_data build data/sample_datastore
echo "[serve-pacs] Orthanc on http://127.0.0.1:$ORTHANC_HTTP_PORT (DICOM port $ORTHANC_DICOM_PORT), storage $PACS_ROOT/storage"
(cd monailabel_app && ../.venv/bin/python -m lib.pacs.orthanc start --root "$PACS_ROOT" \
  --studies ../data/sample_datastore --http-port "$ORTHANC_HTTP_PORT" --dicom-port "$ORTHANC_DICOM_PORT")
trap 'kill -TERM -- "-$(cat "$PACS_ROOT/orthanc.pid")" 2>/dev/null || true' EXIT

export MONAILABEL_PYEXE=${MONAILABEL_PYEXE:-$PWD/.venv/bin/python}
export MONAI_LABEL_DATASTORE_CACHE_PATH=$PACS_ROOT/dicomweb_cache
echo "[serve-pacs] MONAI Label on http://$HOST:$PORT (models: $MODELS) on the PACS; stop with Ctrl+C"
.venv/bin/monailabel start_server \
  --app monailabel_app \
  --studies "http://127.0.0.1:$ORTHANC_HTTP_PORT/dicom-web" \
  --conf models "$MODELS" \
  --conf model_dir "$PACS_ROOT/model" \
  --host "$HOST" --port "$PORT" \
  "$@"
