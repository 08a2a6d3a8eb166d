#!/usr/bin/env bash
# thingsvision in its own environment (it imports tensorflow at import time), outside the repository.
#   bash bench/peers/thingsvision/env.sh [VENV]        (default /tmp/tv-venv)
# The venv sees the project's torch/timm/numpy through a .pth file (no second torch download), gets
# thingsvision 2.7.3 and the few pure-Python packages its PyTorch path imports, and a stub
# `tensorflow` package (tf_stub/ beside this script) that answers every attribute with an empty object.
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository root
VENV=${1:-/tmp/tv-venv}
PY=${PYTHON:-.venv/bin/python}
SITE=$("$PY" -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
BASE=$("$PY" -c "import sys; print(sys._base_executable)")
"$BASE" -m venv "$VENV"
echo "$SITE" > "$VENV/lib/python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages/shared.pth"
"$VENV/bin/pip" install -q --no-deps thingsvision==2.7.3 torchtyping typeguard requests urllib3 certifi idna
echo "thingsvision ready in $VENV (run bench/run.py with TV_PYTHON=$VENV/bin/python)"
