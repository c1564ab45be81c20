#!/usr/bin/env bash
# Build llama.cpp's multimodal CLI and server (for `omnilm export --format gguf` and its tests) from
# the llama.cpp source that llama-cpp-python's source distribution on PyPI carries: llama.cpp is not
# packaged for these machines and binaries are never downloaded. Cached under
# ~/.cache/omnilm/llama.cpp-VERSION (or $OMNILM_LLAMA_CPP): rebuilt only when VERSION changes.
# ~5 min on 2 cores. Prints the folder; bin/ holds llama-mtmd-cli and llama-server, src/ the source
# (with convert_hf_to_gguf.py, which the export runs for the text model).
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python's version; omnilm/llama_cpp.py names the same one
HOME_DIR=${OMNILM_LLAMA_CPP:-${XDG_CACHE_HOME:-$HOME/.cache}/omnilm/llama.cpp-$VERSION}
TARGETS=(llama-mtmd-cli llama-server)

built=1
for target in "${TARGETS[@]}"; do [[ -x $HOME_DIR/bin/$target ]] || built=0; done
if ((built)) && [[ -f $HOME_DIR/src/convert_hf_to_gguf.py ]]; then
  echo "$HOME_DIR"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== llama.cpp $VERSION: source from llama-cpp-python's sdist, build on $(nproc) cores" >&2
start=$SECONDS
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" >&2
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp
# No network at build time: no HTTPS client, no prebuilt web UI; only the two tools are built.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >"$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" -j"$(nproc)" --target "${TARGETS[@]}" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }

# Swap the finished folder in whole, so an interrupted build never looks cached.
mkdir -p "$(dirname "$HOME_DIR")"
staged=$HOME_DIR.partial
rm -rf "$staged" && mkdir -p "$staged/bin"
for target in "${TARGETS[@]}"; do cp "$work/build/bin/$target" "$staged/bin/"; done
mv "$src" "$staged/src"
rm -rf "$HOME_DIR" && mv "$staged" "$HOME_DIR"
echo "== llama.cpp built in $((SECONDS - start)) s" >&2
echo "$HOME_DIR"
