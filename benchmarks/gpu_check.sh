#!/usr/bin/env bash
# The GPU checks of the engine issue, as one script for a lent GPU machine (about 10 minutes):
#   1. parity tests on CUDA in fp32 (tests marked gpu, plus the model parity tests on cuda);
#   2. greedy token match in bf16 and fp16 against transformers fp32 over 16 prompts x 128 tokens;
#   3. decode step time with and without CUDA graphs at batch 1, 32, 256; tokens/s at 256.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (writes gpu_check.log and gpu_bench.json there)
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e '.[dev]' 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check.log"
python3 -m pytest -q -m gpu tests 2>&1 | tee -a "$out/gpu_check.log"
python3 -m benchmarks.gpu_bench --json "$out/gpu_bench.json" 2>&1 | tee -a "$out/gpu_check.log"
