#!/usr/bin/env bash
# Regenerates every LLM oracle file live: tiny tokenizers and MoE checkpoints (transformers),
# GGUF conversions (llama.cpp's converter, gguf-py, libllama's quantizer), and the reference
# fixtures (transformers and llama.cpp logits, greedy tokens, tokenizer ids), then SHA256SUMS.
# Deterministic: on the same machine and package versions a rerun is byte-identical
# (scripts/llm/check_fixtures.py --regen runs this into a scratch dir and compares).
#
# usage: scripts/llm/oracles.sh [OUT=models/llm-tiny] [WORK=target/llm-work]
#        needs the venv from scripts/llm/setup.sh (LLM_VENV overrides .venv-llm)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-models/llm-tiny}
WORK=${2:-target/llm-work}
VENV=${LLM_VENV:-.venv-llm}
PY=$VENV/bin/python
export LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-$VENV/src/llama_cpp_python-0.3.36/vendor/llama.cpp}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
if ! "$PY" -c "import torch, transformers, gguf, llama_cpp" 2>/dev/null || [ ! -f "$LLAMA_CPP_DIR/convert_hf_to_gguf.py" ]; then
    echo "oracles.sh: $VENV or $LLAMA_CPP_DIR missing; run scripts/llm/setup.sh first" >&2
    exit 1
fi

step() {
    local name=$1; shift
    printf '\n--- oracles: %s\n' "$name"
    local t0=$SECONDS
    "$@"
    printf -- '--- oracles: %s took %d s\n' "$name" $((SECONDS - t0))
}

mkdir -p "$OUT" "$WORK"
rm -rf "$OUT/gguf" "$OUT/fixtures" "$WORK/gguf"
T0=$SECONDS
step "tokenizers + tiny models (make_tiny.py)" "$PY" scripts/llm/make_tiny.py "$OUT" "$WORK"
step "GGUF conversions (make_gguf.py)" "$PY" scripts/llm/make_gguf.py "$OUT" "$WORK"
step "fixtures (make_fixtures.py)" "$PY" scripts/llm/make_fixtures.py "$OUT" "$WORK"
step "f16/bf16 upcast oracles (make_upcast_fixtures.py)" "$PY" scripts/llm/make_upcast_fixtures.py "$OUT"
(cd "$OUT" && find . -type f ! -name SHA256SUMS ! -name README.md | LC_ALL=C sort | xargs sha256sum) > "$OUT/SHA256SUMS"
printf '\n--- oracles: done in %d s; %s files, %s bytes in %s\n' $((SECONDS - T0)) \
    "$(wc -l < "$OUT/SHA256SUMS")" "$(du -sb "$OUT" | cut -f1)" "$OUT"
