#!/usr/bin/env bash
# Every fine-tuning mode through the CLI on a 1,000-image CIFAR-10 slice at 64 px, then a run killed
# (SIGKILL) right after its first checkpoint and resumed by rerunning the same command.
#   bash bench/finetune_modes.sh [EPOCHS]        (uses .venv/bin/python unless PYTHON is set)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SRC=../shared/data/cifar10_small.npz
[ -f "$SRC" ] || { echo "skip: $SRC absent"; exit 0; }
EPOCHS=${1:-2}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" - "$SRC" "$TMP/c1k.npz" <<'PYEOF'
import sys, numpy as np
d = np.load(sys.argv[1])
tr = np.sort(np.concatenate([np.flatnonzero(d["y_train"] == c)[:100] for c in range(10)]))
te = np.sort(np.concatenate([np.flatnonzero(d["y_test"] == c)[:50] for c in range(10)]))
np.savez(sys.argv[2], x_train=d["x_train"][tr], y_train=d["y_train"][tr], x_test=d["x_test"][te],
         y_test=d["y_test"][te], class_names=d["class_names"])
PYEOF
echo "| mode | epochs | val acc | test acc | wall s |"
echo "|---|---|---|---|---|"
for mode in head last:2 full scratch; do
  start=$(date +%s.%N)
  "$PY" -m transferlab finetune --data "npz:$TMP/c1k.npz" --mode "$mode" --epochs "$EPOCHS" --image-size 64 \
      --out "$TMP/ft_$mode" --quiet >/dev/null
  end=$(date +%s.%N)
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"| $mode | {m['epochs_run']} | {m['val_accuracy']:.3f} | {m['test_accuracy']:.3f} | {float(sys.argv[2]):.0f} |\")" \
      "$TMP/ft_$mode/metrics.json" "$(echo "$end - $start" | bc)"
done
cmd=("$PY" -m transferlab finetune --data "npz:$TMP/c1k.npz" --mode last:2 --epochs 3 --image-size 64 --out "$TMP/killed" --quiet)
"${cmd[@]}" >/dev/null 2>&1 &
pid=$!
while [ ! -f "$TMP/killed/checkpoint.pt" ]; do sleep 0.2; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
before=$("$PY" -c "import json; print(json.load(open('$TMP/killed/metrics.json')).get('epochs_run'))")
"${cmd[@]}" >/dev/null
after=$("$PY" -c "import json; m=json.load(open('$TMP/killed/metrics.json')); print(m['epochs_run'], m['complete'])")
echo
echo "killed after the first checkpoint (metrics said epochs_run=$before); rerun of the same command -> epochs_run, complete = $after"
