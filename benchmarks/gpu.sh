#!/usr/bin/env bash
# The benchmark run on a lent NVIDIA GPU (MLX CUDA backend), from a fresh machine with no manual step.
# Results go to the label of the card (h100 or h200, from nvidia-smi) in /tmp/bench-out, and are copied to $OUT.
#
# Here, once:  EXTRA_WHEELS="mlx-audio==0.6.2 miniaudio websockets webrtcvad-wheels" \
#                ../shared/device/prepare_mlx_cuda.sh          # fills .dev-a/ and .dev-b/ (git-ignored)
#              mkdir -p .bench-data && cp -r ../shared/data/qwen2-bpe .bench-data/   # BPE tables (git-ignored)
# On the device, back to back (a machine idle for 30 s is given back; then start again at call 1):
#   call 1 (carry .dev-a .ptx):          mkdir -p /tmp/w && cp .dev-a/* /tmp/w/ && tar xzf .ptx/ptx.tgz -C /tmp
#   call 2 (carry .dev-b .whl-gpu):      bash benchmarks/gpu.sh install tts-0.6B        (~8 min)
#   call 3:                              bash benchmarks/gpu.sh tts-1.7B stt            (~9 min)
#   call 4 (optional):                   bash benchmarks/gpu.sh v2v integ profile       (~4+3+3 min)
# .ptx/ptx.tgz is MLX's JIT cache (/tmp/mlx/<version>/ptx) of an earlier lease, which every run returns in $OUT: without
# it the first job of a fresh machine spends ~1-2 min compiling kernels (0.6B bf16: 154 s against 115 s for 1.7B after
# it). From a worktree copied into FOLDER (/work/wt/notes/gpu-sync.sh), carry FOLDER in EVERY call, not only the first:
# an ignored folder a call does not carry is gone on the device (17:06 UTC, 2026-12-07: `cd .dev-gpu` failed).
# `ab` times the 0.6B frame fused, in the checkpoint's layout and fused without addmm (AB="fused unfused no-addmm";
# a variant fuse=K=V,... is tts_profile's --fuse, the talker's FuseOptions: AB="fused fuse=attention=gemv"),
# AB_REPS times (~40 s each), each under every MLX setting of AB_ENVS (e.g. "MLX_NONE=1 MLX_USE_CUDA_GRAPHS=0
# MLX_MAX_OPS_PER_BUFFER=1000"; MLX_NONE=1 is MLX's defaults), recorded in the profile row's "env"; AB_ARGS replaces
# its tts_profile arguments (e.g. "--utterances-only --frames 100 250 --runs 4": whole utterances only, ~20 s each);
# AB_TREES=". ../.dev-s5" runs each variant from each code tree in turn (carried folders; each row gets "code");
# `ops` counts the operations of a frame's graphs (benchmarks/tts_ops.py), fused and unfused (seconds); `kernels`
# times one kernel of each kind a frame launches (benchmarks/tts_kernels.py: gemv against cuBLAS, the q/k chain, ...).
# `ab2` settles the FuseOptions A/B in one process (benchmarks/tts_ab.py): the 0.6B checkpoint loaded once per layout
# of AB2 (default "fused no-addmm fuse=attention=gemv,residual=add fused": the loader's layout first, the baseline;
# the last an A/A control), then rounds of one 48-frame streamed utterance per layout in a random order until
# --seconds (from the process start) run out; per layout ms and host ms per frame, paired differences against the
# first with 95% intervals. Rows: benchmarks/<label>-ab.jsonl (docs table "TTS layouts A/B"). AB2_SIZES="0.6B 1.7B"
# runs each size in turn (peak: four 0.6B models 9.8 GB, a 1.7B pair 10.1 GB, on the CPU); AB2_ARGS replaces
# "--frames 48 --seconds 180".
# The next lease, ONE call after call 1 (~4 min): call 2 (carry .dev-b .whl-gpu): bash benchmarks/gpu.sh install ab2
#   then here: cat <files_at>/benchmarks/<label>-ab.jsonl >> docs/benchmarks/<label>-ab.jsonl
#   && python -m benchmarks.report
# FRESH="tts" on the first call of a session drops the label's earlier TTS rows (taken on other code).
# The daemon's pure-Python needs (soundfile, which every part imports, soxr, wyoming, platformdirs, httpx2, ...) travel
# in .whl-gpu/ (carry it with .dev-b; `install` adds them); the Smart Turn ONNX in .st-model/ (v2v then ends turns with
# it): carry it in call 1, whose command adds `mkdir -p /tmp/st-model && cp .st-model/*.onnx /tmp/st-model/`, and
# leave .ptx out of that call (a call carries at most 64 MiB with the tree: .dev-a 48 + .st-model 9 + tree 6 MB;
# .dev-b 46 + .whl-gpu 2.5 + a worktree copy 4.3 + tree 6 MB). The Qwen2 BPE tables come from .bench-data/ when
# carried, else from the committed tests/fixtures copy.
# Then here: cp <files_at>/benchmarks/<label>.json docs/benchmarks/ && python -m benchmarks.report
# Parts run in the order given; each stops in time (LIMIT_<part> seconds) to copy its results back inside the
# 10-minute call. A helper's worktree that travels as a carried folder runs the same way: `cd FOLDER && bash ...`.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: gpu.sh [install] tts-0.6B|tts-1.7B|stt|llm|v2v ..." >&2; exit 2; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
for d in .bench-data ../.bench-data; do [ -f $d/qwen2-bpe/vocab.json ] && bpe=$d && break; done
if [ -n "${bpe:-}" ]; then  # carried: keep a copy for later calls on this machine
  mkdir -p /tmp/.bench-data && cp -r "$bpe/qwen2-bpe" /tmp/.bench-data/
elif [ ! -f /tmp/.bench-data/qwen2-bpe/vocab.json ]; then  # else the committed test copy (xz), 4 MB less to carry
  python3 -c "import lzma, pathlib; d = pathlib.Path('/tmp/.bench-data/qwen2-bpe'); d.mkdir(parents=True, exist_ok=True)
for n in ('vocab.json', 'merges.txt'): (d / n).write_bytes(lzma.open(f'tests/fixtures/qwen2_bpe/{n}.xz').read())"
fi
export QWEN2_BPE_DIR=${QWEN2_BPE_DIR:-/tmp/.bench-data/qwen2-bpe}
for d in .st-model ../.st-model; do  # Smart Turn ONNX carried: v2v ends turns by the model, as the daemon does
  [ -f $d/smart-turn-v3.2-cpu.onnx ] && mkdir -p /tmp/st-model && cp $d/smart-turn-v3.2-cpu.onnx /tmp/st-model/
done
[ -f /tmp/st-model/smart-turn-v3.2-cpu.onnx ] && export SMART_TURN_DIR=${SMART_TURN_DIR:-/tmp/st-model}
export BENCH_CACHE=${BENCH_CACHE:-/tmp/bench-checkpoints}
RESULTS=${RESULTS:-/tmp/bench-out/benchmarks}
mkdir -p "$RESULTS" "$BENCH_CACHE"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$card" in *H200*) label=h200 ;; *H100*) label=h100 ;; *) label=gpu ;; esac
label=${LABEL:-$label}
echo "card: ${card:-none} -> label $label"
cp -n docs/benchmarks/*.json "$RESULTS"/ 2>/dev/null || true  # earlier rows of this label continue
for s in ${FRESH:-}; do  # FRESH="tts ...": this run's rows replace the label's earlier sections (other code)
  python3 -c "import json, sys; p = sys.argv[1]; d = json.load(open(p)); d['sections'].pop(sys.argv[2], None)
json.dump(d, open(p, 'w'), indent=1)" "$RESULTS/$label.json" "$s" 2>/dev/null
done
rc=0
for part in "$@"; do
  if [ "$part" = install ]; then
    inst=.dev-b/install.sh; [ -f "$inst" ] || inst=../.dev-b/install.sh  # from a carried worktree folder
    bash "$inst" || exit 3
    for w in .whl-gpu ../.whl-gpu; do  # the pure-Python needs of the daemon and Wyoming (prepared like .dev-b)
      [ -d $w ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $w/*.whl
    done
    continue
  fi
  python3 -c "import mlx.core as mx; print('backend', mx.default_device())" \
    || { echo "MLX is not in /tmp/site: run call 1, then 'gpu.sh install ...' (carry .dev-b)" >&2; exit 3; }
  python3 -c "import soundfile" 2>/dev/null \
    || { echo "soundfile is not in /tmp/site: 'gpu.sh install ...' with .whl-gpu carried beside .dev-b" >&2; exit 3; }
  case "$part" in
    tts-0.6B) args=(--only tts --tts-sizes 0.6B); limit=${LIMIT_TTS06:-480} ;;
    tts-1.7B) args=(--only tts --tts-sizes 1.7B); limit=${LIMIT_TTS17:-280} ;;
    stt) args=(--only stt); limit=${LIMIT_STT:-290} ;;
    llm) args=(--only llm); limit=${LIMIT_LLM:-300} ;;
    v2v) args=(--only v2v); limit=${LIMIT_V2V:-450} ;;
    profile|ab|ab2|ops|kernels|integ)  # raw JSON lines: benchmarks/<label>-<part>.jsonl (ab: in profile; ab2: in ab)
      if [ $part = ops ]; then  # operations per frame, fused and unfused (narrow widths: seconds), a smoke test too
        cmds=("-m benchmarks.tts_ops --size 0.6B" "-m benchmarks.tts_ops --size 0.6B --unfused")
      elif [ $part = kernels ]; then  # us per kernel of each kind a frame launches (~1 min)
        cmds=("-m benchmarks.tts_kernels")
      elif [ $part = ab2 ]; then  # layouts alternating in one process: paired differences (benchmarks/tts_ab.py)
        cmds=(); for s in ${AB2_SIZES:-0.6B}; do
          lay=${AB2:-fused no-addmm fuse=attention=gemv,residual=add fused}
          cmds+=("-m benchmarks.tts_ab --size $s --layouts $lay ${AB2_ARGS:---frames 48 --seconds 180}")
        done; part=ab
      elif [ $part = profile ]; then
        cmds=("-m benchmarks.tts_profile --size 0.6B" "-m benchmarks.tts_profile --size 1.7B --positions 100")
      elif [ $part = ab ]; then  # the fused layout against the checkpoint's and without addmm, in turn
        cmds=(); for _ in $(seq "${AB_REPS:-1}"); do for v in ${AB:-fused unfused no-addmm}; do
          f=""; [ "$v" = fused ] || f="--$v"
          for e in ${AB_ENVS:-MLX_NONE=1}; do  # AB_ENVS="MLX_NONE=1 MLX_USE_CUDA_GRAPHS=0": each variant per setting
            for t in ${AB_TREES:-.}; do  # AB_TREES=". ../.dev-s5": each code tree's own tts_profile, in turn
              cmds+=("@$t $e -m benchmarks.tts_profile --size 0.6B ${AB_ARGS:---positions 100 --frames 100} $f")
            done
          done
        done; done; part=profile
      else
        cmds=("-m benchmarks.integ --real --reps 5")
      fi
      for c in "${cmds[@]}"; do
        d=.; case "$c" in @*) d=${c%% *}; d=${d#@}; c=${c#* } ;; esac  # the code tree (ab) leads the command
        e=""; case "$c" in MLX_*) e=${c%% *}; c=${c#* } ;; esac  # then an MLX environment setting (ab)
        tag=""; [ -n "${AB_TREES:-}" ] && tag="\"code\": \"$d\", "  # each row names its tree when there are several
        (cd "$d" && timeout -k 10 "${LIMIT_PART:-280}" env PYTHONPATH=.:/tmp/site $e python3 -u $c) \
          | grep --line-buffered '^{' | sed -u "s|^{|{$tag|" | tee -a "$RESULTS/$label-$part.jsonl" || rc=$?
      done
      continue ;;
    *) echo "unknown part $part: use install, tts-0.6B, tts-1.7B, stt, llm, v2v, profile, ab, ab2, ops, kernels or integ" >&2
       exit 2 ;;
  esac
  # JOBS="4-bit,mxfp4": only the jobs whose names contain one of these ("tts 0.6B bf16$": that name exactly)
  # TTS_ENV="MLX_USE_CUDA_GRAPHS=0 ...": MLX settings for this part's jobs (each row records its MLX_* settings)
  # TTS_FUSE="attention=gemv,residual=add": our TTS in that FuseOptions layout (each row records it as "layout")
  timeout -k 10 "$limit" env ${TTS_ENV:-} python3 -u -m benchmarks --label "$label" --out "$RESULTS" "${args[@]}" \
    --jobs "${JOBS:-}" \
    || rc=$?
done
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/benchmarks" && cp "$RESULTS/$label"*.json* "$OUT/benchmarks/"
  cp "$RESULTS"/../benchmarks.md "$OUT/" 2>/dev/null
  tar czf "$OUT/ptx.tgz" -C /tmp mlx 2>/dev/null  # the JIT cache for the next lease's call 1 (~5 MB)
fi
df -h /tmp | tail -1
exit $rc
