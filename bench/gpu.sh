#!/usr/bin/env bash
# The GPU checks in one run (see bench/gpu.py): no arguments needed on a machine with an NVIDIA
# GPU; the JSON goes to $OMNILM_GPU_JSON (default ./gpu.json) or --out PATH, and is printed.
#   bash bench/gpu.sh                 # GPU, about 5 minutes
#   bash bench/gpu.sh --dry-run       # CPU, tiny models, under a minute
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PYTHON" bench/gpu.py "$@"
