#!/usr/bin/env bash
# The GPU checks of issue 11 in one prepared run, for a machine with a CUDA GPU (e.g. the device tool's H200:
# its python3 already holds torch, numpy, h5py, numba, click, scipy, pandas, matplotlib, tqdm; nothing is
# installed, the tree is imported through PYTHONPATH). At most 9 minutes (the step limits sum to 540 s):
# through the device tool, one `run` with timeout_s=600.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh [N_DISTRACTORS]     (default 1000000)
#
# Steps, each under its own time limit so that one hang cannot eat the rest:
#   1. pytest -m cuda: the CUDA tests (torch kernel on CUDA == CPU; the whole protocol on CUDA == CPU ==
#      brute force; CUDA extraction (float32, bf16) vs the CPU store; profile --device cuda)
#   2. benchmarks/megaface.py --device cuda at N: the whole protocol vs its torch GEMM floor (aim < 10 s)
#   3. megabench profile --table 1 --device cuda: the paper's Table 1 columns, GPU memory at batch 128
#   4. megabench extract on CUDA (sranet_r100, random weights, a generated insightface .bin pack, flips)
# $OUT gets two files (the device tool returns at most 8): summary.txt (each step's rc, time and log tail) and
# gpu_check.tar.gz (every log and the profile JSONs).
# DEVICE=cpu runs the same steps on the CPU (a dry run of the script itself; the CUDA tests then fail);
# PROFILE_ARGS, EXTRACT_MODEL and PAIRS shrink steps 3-4 there (PROFILE_ARGS="--model iresnet_tiny --batch 4"
# EXTRACT_MODEL=iresnet_tiny PAIRS=200).
set -u
N=${1:-1000000}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
WORK=${WORK:-/tmp/megabench_gpu_check}
EXTRACT_MODEL=${EXTRACT_MODEL:-sranet_r100}
PAIRS=${PAIRS:-1200}
LOGS="$WORK/logs"
mkdir -p "$OUT" "$LOGS" && touch "$OUT/summary.txt" || { echo "error: cannot write to $OUT or $LOGS; set OUT (and WORK) to writable folders" >&2; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MEGABENCH_CACHE=${MEGABENCH_CACHE:-$WORK/cache}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME SECONDS command...: run it, keep its log, note rc and seconds in the summary
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    echo "== $name: rc $rc in $(( $(date +%s) - start )) s (limit $limit s): $*" | tee -a "$SUMMARY"
    tail -n 30 "$LOGS/$name.log" | tee -a "$SUMMARY"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    $PY -c "import sys, torch, numpy, numba, h5py; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'numba', numba.__version__, 'h5py', h5py.__version__)"
    nproc
} >>"$SUMMARY" 2>&1

step cuda_tests 100 "$PY" -m pytest -q -p no:cacheprovider --tb=short -rfE -m cuda tests/test_megaface_kernels.py \
    tests/test_megaface_protocol.py tests/test_extract_engine.py tests/test_profile_export.py
step megaface_bench 200 "$PY" benchmarks/megaface.py --distractors "$N" --skip-dense --device "$DEVICE" \
    --breakdown-blocks 0 --engine-runs 3
step profile 120 "$PY" -m megabench profile ${PROFILE_ARGS:---table 1} --device "$DEVICE" --out "$LOGS/profile"
step synth_pack 45 "$PY" -m megabench synth faces --out "$WORK/faces" --identities 4 --images-per-identity 2 \
    --pack-identities 200 --pairs "$PAIRS" --workers 8
step extract 75 "$PY" -m megabench extract --model "$EXTRACT_MODEL" --random-weights \
    --pairs "$WORK/faces/heldout.bin" --out "$WORK/heldout.h5" --device "$DEVICE" --batch 256 --force

cp "$SUMMARY" "$LOGS/"
tar -czf "$OUT/gpu_check.tar.gz" -C "$LOGS" . 2>/dev/null
echo "done: $SUMMARY" | tee -a "$SUMMARY"
