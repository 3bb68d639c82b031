#!/usr/bin/env bash
# The GPU check: training and inference throughput of the fine-tuning path (strategy `full`, the
# large recipes' strategy family) in fp32 / channels_last / bf16-mixed / both, at 224 px and at the
# large recipes' 64 px, the feature cache's cold vs warm linear probe, and the frozen feature
# pass (torch eager / channels_last / tlkit's frozen pass, which stays on torch there) on a CUDA
# device.
# About 3 minutes on one H200 after the install; the figures land in bench/results/ and, when $OUT
# is set (the device tool), are copied there.
#
#   bash bench/gpu.sh            # needs a CUDA device; refuses to run without one
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e ".[test]"
fi
PY=$(pwd)/.venv/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: no CUDA device visible to torch; run it on a GPU machine" >&2
  exit 2
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
cd bench
"$PY" precision.py --steps 30 --image-size 224 --batch-size 64 --repeats 2
cp results/precision.md results/gpu_precision_224.md
cp results/precision.json results/gpu_precision_224.json
"$PY" precision.py --steps 30 --image-size 64 --batch-size 128 --repeats 2
cp results/precision.md results/gpu_precision_64.md
cp results/precision.json results/gpu_precision_64.json
"$PY" cache.py --epochs 10 --image-size 224 --repeats 2
cp results/cache.md results/gpu_cache.md
cp results/cache.json results/gpu_cache.json
"$PY" runtimes.py --device cuda --rounds 3
cp results/runtimes.md results/gpu_runtimes.md
cp results/runtimes.json results/gpu_runtimes.json
git checkout -- results/runtimes.md results/runtimes.json 2>/dev/null || true
git checkout -- results/precision.md results/precision.json results/cache.md results/cache.json 2>/dev/null || true
if [ -n "${OUT:-}" ]; then
  cp results/gpu_* "$OUT"/
fi
