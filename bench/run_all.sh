#!/usr/bin/env bash
# Run the speed benchmarks (about 16 minutes on 2 CPU cores) and assemble bench/RESULTS.md.
# The ensemble and quadrant benchmarks are longer: run ensemble.py and quadrants.py on their own.
# Run it on an otherwise idle machine; each script measures its contenders interleaved.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
$PY overhead.py
$PY cache.py
$PY lbfgs.py
$PY floor.py
$PY memory.py
$PY precision.py
$PY runtimes.py
$PY solver.py
$PY assemble.py
