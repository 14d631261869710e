#!/usr/bin/env bash
# One GPU run of `llmserve profile`: profile a model on this machine's GPU, check the
# profile against whole forward passes (eager and CUDA graphs), and compare with the
# same profiler timing operators on warm caches. Run from the repository root:
#
#   bash benchmarks/device/profile_gpu.sh            # MODEL=meta-llama/Llama-3.1-8B
#
# (DEVICE=cpu QUICK=1 MODEL=profiles/models/llmserve/tiny-llama.json runs the same
# steps on a CPU in seconds, to try the script.)
#
# On a machine without this project's dependencies, put wheels of pydantic,
# pydantic-core, annotated-types, typing-inspection, typing-extensions, gymnasium and
# farama-notifications for its Python in .whl/ (benchmarks/device/fetch_wheels.sh
# fetches them for CPython 3.12); they are installed into /tmp/site. PyTorch with CUDA
# must be there already. Writes into $OUT (default out/device), at most 7 files:
#   profile/            the profile (meta.yaml, dense.csv, per_sequence.csv,
#                       attention.csv) and its iteration_check.json
#   profile.log         nvidia-smi, the profiler's and the check's output
#   warm.json           the same profile and check with warm caches (cold_mib 0)
set -euo pipefail
OUT=${OUT:-out/device}
MODEL=${MODEL:-meta-llama/Llama-3.1-8B}
DEVICE=${DEVICE:-cuda}
DTYPE=bf16; PROFILE_GRID=(); BENCH_GRID=(--full-grid)
if [ "${QUICK:-0}" = 1 ]; then DTYPE=fp32; PROFILE_GRID=(--quick --repeat 2); BENCH_GRID=(--repeat 2); fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
LLMSERVE=(python3 -c 'import sys; from llmserve_env.cli.main import main; sys.argv[0] = "llmserve"; main()')
{
    if [ "$DEVICE" != cpu ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv
        python3 -c 'import torch; p = torch.cuda.get_device_properties(0); print(torch.__version__, p.name, p.multi_processor_count, "SMs", getattr(p, "L2_cache_size", 0) // 2**20, "MiB L2")'
    fi
    "${LLMSERVE[@]}" profile "$MODEL" --device "$DEVICE" --dtype "$DTYPE" -o "$OUT/profile" \
        --check-iterations "${PROFILE_GRID[@]}"
} 2>&1 | tee "$OUT/profile.log"
python3 benchmarks/validation/profiler_iterations.py --device "$DEVICE" --model "$MODEL" \
    --dtype "$DTYPE" "${BENCH_GRID[@]}" --cold-mib 0 --rounds 1 --threads 0 --json "$OUT/warm.json" \
    2>&1 | tee -a "$OUT/profile.log"
