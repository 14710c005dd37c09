#!/usr/bin/env bash
# The benchmark run on the lent H200 (MLX CUDA backend). Run from the repository root, in this order, each part
# as one device call (10 minutes per call); all parts add to one label, h200, in /tmp/bench-out:
#
#   call 1 (carry .dev-a .bench-data): mkdir -p /tmp/w && cp .dev-a/* /tmp/w/ && cp -r .bench-data /tmp/
#   call 2 (carry .dev-b):              bash .dev-b/install.sh && bash benchmarks/gpu.sh tts-0.6B   (~5 min)
#   call 3:                             bash benchmarks/gpu.sh tts-1.7B                              (~6 min)
#   call 4:                             bash benchmarks/gpu.sh stt-llm                               (~5 min)
#   call 5:                             bash benchmarks/gpu.sh v2v                                   (~3 min)
#
# .dev-a/.dev-b come from /work/shared/device/prepare_mlx_cuda.sh with
#   EXTRA_WHEELS="mlx-audio==0.6.2 miniaudio websockets webrtcvad-wheels"
# (call 2 must follow call 1 within 30 s). .bench-data/qwen2-bpe/{vocab.json,merges.txt} are the Qwen2 BPE tables
# (copied from /work/shared/data/qwen2-bpe; git-ignored). Each call copies the JSON and the Markdown so far into
# $OUT; after each call: cp <files_at>/benchmarks/h200.json docs/benchmarks/ (then python -m benchmarks.report).
# Run the calls back to back: a machine idle for 30 s is given back, and a fresh one needs calls 1-2 again (the
# h200.json copied into docs/benchmarks/ travels with the working tree, so the label continues where it was).
set -uo pipefail
part=${1:?usage: gpu.sh tts-0.6B|tts-1.7B|stt-llm|v2v|all}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
bpe=$PWD/.bench-data/qwen2-bpe; [ -f "$bpe/vocab.json" ] || bpe=/tmp/.bench-data/qwen2-bpe  # carried or copied in call 1
export QWEN2_BPE_DIR=${QWEN2_BPE_DIR:-$bpe}
export BENCH_CACHE=${BENCH_CACHE:-/tmp/bench-checkpoints}
RESULTS=${RESULTS:-/tmp/bench-out/benchmarks}
mkdir -p "$RESULTS"
cp -n docs/benchmarks/*.json "$RESULTS"/ 2>/dev/null || true  # CPU tables, and h200 rows of earlier calls
python3 -c "import mlx.core as mx; print('backend', mx.default_device())" || { echo "MLX is not in /tmp/site: run the install calls first" >&2; exit 3; }
# stop in time to copy the results back before the 10-minute call limit (JSON is written after every job)
run() { timeout -k 10 "${LIMIT:-520}" python3 -u -m benchmarks --label h200 --out "$RESULTS" "$@"; }
case "$part" in
  tts-0.6B) LIMIT=${LIMIT:-470} run --only tts --tts-sizes 0.6B ;;  # shares its call with the install
  tts-1.7B) run --only tts --tts-sizes 1.7B ;;
  stt-llm) run --only stt,llm ;;
  v2v) run --only v2v ;;
  all) LIMIT=${LIMIT:-3600} run --only tts,stt,llm,v2v ;;  # one long session, not a 10-minute call
  *) echo "unknown part $part: use tts-0.6B, tts-1.7B, stt-llm, v2v or all" >&2; exit 2 ;;
esac
rc=$?
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/benchmarks" && cp "$RESULTS"/h200.json "$OUT/benchmarks/" && cp "$RESULTS"/../benchmarks.md "$OUT/"
fi
df -h /tmp | tail -1
exit $rc
