#!/usr/bin/env bash
# Recreate the reference virtual environment for tools/qwen3_tts_ref/make_fixtures.py (the official qwen-tts
# 0.1.1 pins transformers 4.57.3, so it cannot share the project's venv). Usage:
#   tools/qwen3_tts_ref/setup_venv.sh [VENV_DIR]    (default: /work/refvenv-tts)
#   VENV_DIR/bin/python tools/qwen3_tts_ref/make_fixtures.py
# qwen-tts is installed with --no-deps: it imports torchaudio only for its 25 Hz tokenizer, and no torchaudio
# build exists for torch 2.13 here, so make_fixtures.py registers an empty stand-in module instead.
set -euo pipefail
VENV="${1:-/work/refvenv-tts}"
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0 transformers==4.57.3 accelerate==1.12.0 einops librosa soundfile sox onnxruntime
"$VENV/bin/pip" install -q --no-deps qwen-tts==0.1.1
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
