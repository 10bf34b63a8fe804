#!/usr/bin/env bash
# The GPU check: runs benchmarks/gpu_check.py (FAISS on the GPU against the CPU, then the model
# towers and GPU JPEG decoding) and exits non-zero when it fails, or when there is no GPU to
# check. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" benchmarks/gpu_check.py "$@"
