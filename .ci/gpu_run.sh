#!/usr/bin/env bash
# The one prepared GPU call, run ON the GPU machine from the repo root after .ci/gpu_wheels.sh
# has filled .whl/ here:
#     device run:  command "bash .ci/gpu_run.sh", carry [".whl"], timeout_s 580
# It installs the carried wheels beside the image's CUDA torch, records the GPU and torch, and
# runs `python -m shared.gpucheck` (items 1-4, then the notebooks in what is left of BUDGET
# seconds). Everything it writes is under $OUT: gpu_report.json, gpu_report.md, the log.
# Where no GPU is visible gpucheck exits with a clear error; on a CPU, for a dry run of this
# script, set GPUCHECK_ARGS="--device cpu --quick" and SKIP_WHEELS=1.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpucheck_out}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed" >&2; exit 3; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA GPU')" 2>&1 | tee "$OUT/env.txt"
timeout "${TIMEOUT:-560}" python3 -m shared.gpucheck --out "$OUT/gpu_report.json" --overwrite \
    --budget "${BUDGET:-450}" ${GPUCHECK_ARGS:-} 2>&1 | tee "$OUT/gpucheck.log"
exit "${PIPESTATUS[0]}"
