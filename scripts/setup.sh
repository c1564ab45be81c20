#!/usr/bin/env bash
# Install omnilm and everything its quickstart and tests use, into the active Python environment.
# CPU-only machines keep the CPU build of torch: torch is pinned in the same pip command.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng pocketsphinx-testdata chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: system packages missing (${missing[*]}): install them with" \
         "'sudo apt-get install ${missing[*]}' for speech synthesis, test audio and browser tests" >&2
  fi
fi

echo "== pip install (pinned)"
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -r requirements-offline.txt
python -m pip install -q --no-deps -e .

echo "== lmms-eval into .venv-lmms (its own environment: requirements-lmms.txt says why)"
python -m venv .venv-lmms
.venv-lmms/bin/python -m pip install -q -c requirements.txt -r requirements-lmms.txt
.venv-lmms/bin/python -m pip uninstall -q -y torchvision
echo "== llama.cpp for the GGUF export and its tests (cached after the first build)"
bash scripts/llama_cpp.sh >/dev/null

python -c "import torch, omnilm; print('omnilm', omnilm.__version__, 'with torch', torch.__version__)"
