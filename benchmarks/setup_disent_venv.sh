#!/usr/bin/env bash
# Create .venv-disent, the separate environment used only by the metric cross-check
# (benchmarks/bench_metrics_disent.py runs benchmarks/disent_scores.py with its python).
# disent 0.8.0 pins its own torch (2.14.1), so it never shares untwine's .venv.
# Idempotent: does nothing when .venv-disent already imports disent 0.8.0.
#
#   bash benchmarks/setup_disent_venv.sh            # from the repository root
#   PYTHON=python3.11 VENV=.venv-disent bash benchmarks/setup_disent_venv.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv-disent}"
DISENT_VERSION="0.8.0"

if [ -x "$VENV/bin/python" ] && \
   "$VENV/bin/python" -c "import disent.metrics, importlib.metadata as m, sys; sys.exit(m.version('disent') != '$DISENT_VERSION')" 2>/dev/null; then
    echo "$VENV already has disent $DISENT_VERSION; nothing to do"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; disent $DISENT_VERSION needs Python 3.8-3.11: set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip follows the machine's configured indexes (find-links / extra-index-url): torch comes from local disk here.
"$VENV/bin/python" -m pip install --quiet "disent==$DISENT_VERSION"
"$VENV/bin/python" -c "import disent.metrics, importlib.metadata as m; print('$VENV: disent', m.version('disent'))"
