#!/usr/bin/env bash
# Python environment for the LLM oracle scripts (scripts/llm/*.py), pinned; idempotent.
# Adapted from shared/LLM-TOOLCHAIN.md (steps 1, 4 and 5).
#
#   .venv-llm/                        (gitignored) venv with the pinned packages below
#   .venv-llm/sdist/                  llama-cpp-python 0.3.36 sdist (76.6 MB, sha256 checked)
#   .venv-llm/src/llama_cpp_python-0.3.36/vendor/llama.cpp
#                                     llama.cpp tree of that sdist: convert_hf_to_gguf.py, conversion/,
#                                     gguf-py/ (oracles.sh uses it as LLAMA_CPP_DIR)
#
# usage: scripts/llm/setup.sh         (LLM_VENV overrides the venv path)
# Cold: ~1.5 min for torch & co. (PyPI's Linux torch wheel is the CUDA build, ~3 GB with its nvidia-*
# wheels; it runs on CPU) plus ~7-8 min compiling llama-cpp-python (CPU build, -march=native, OpenMP;
# pip caches the wheel, so a rebuild on the same machine is instant). Warm (all present): ~5 s.
# The llama-cpp-python build is compiled for this CPU (-march=native): rebuild it on another machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${LLM_VENV:-.venv-llm}
PINS=(torch==2.15.0 transformers==5.25.0 safetensors==0.8.0 tokenizers==0.23.3 gguf==0.19.0
      numpy==2.4.6 sentencepiece==0.2.3 protobuf==7.36.2)
LCP=llama-cpp-python==0.3.36
SDIST=llama_cpp_python-0.3.36.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" --disable-pip-version-check)

have() {  # every pin installed at exactly that version?
    "$VENV/bin/python" - "$@" <<'PYEOF'
import sys, importlib.metadata as md
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    try:
        if md.version(name) != ver:
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
PYEOF
}

if have "${PINS[@]}"; then
    echo "setup: ${PINS[*]} present"
else
    "${PIP[@]}" install --no-cache-dir "${PINS[@]}"
fi
if have "$LCP"; then
    echo "setup: $LCP present"
else
    # CPU build from source: ~7-8 min on 2 cores
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} "${PIP[@]}" install "$LCP"
fi

mkdir -p "$VENV/sdist" "$VENV/src"
if [ ! -f "$VENV/sdist/$SDIST" ]; then
    # --no-binary for this package only (":all:" would also build cmake, ninja, ... from source)
    "${PIP[@]}" download "$LCP" --no-deps --no-binary llama-cpp-python -d "$VENV/sdist"
fi
echo "$SDIST_SHA256  $VENV/sdist/$SDIST" | sha256sum -c --quiet
LC=$VENV/src/llama_cpp_python-0.3.36/vendor/llama.cpp
[ -f "$LC/convert_hf_to_gguf.py" ] || tar xzf "$VENV/sdist/$SDIST" -C "$VENV/src"

"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md
print("setup: " + ", ".join(f"{p} {md.version(p)}" for p in
      ("torch", "transformers", "safetensors", "tokenizers", "gguf", "numpy", "sentencepiece",
       "protobuf", "llama_cpp_python")))
PYEOF
echo "setup: LLAMA_CPP_DIR=$LC"
