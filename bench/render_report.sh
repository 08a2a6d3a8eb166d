#!/usr/bin/env bash
# Render a sweep's report.html in a headless browser and save a screenshot (the check that the page
# really draws: tables, text and the embedded pictures). Not part of CI: it may need apt.
#
#   bench/render_report.sh [SWEEP_DIR]      # default: runs the embedded digits sweep into /tmp/tl_render
#
# Installs Debian's chromium when no browser is found (root only; CI never runs this).
set -euo pipefail
dir="${1:-}"
if [ -z "$dir" ]; then
  dir=/tmp/tl_render
  transferlab sweep --out "$dir" --quiet
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  browser=$(command -v chromium)
fi
"$browser" --headless --no-sandbox --disable-gpu --window-size=1100,2400 \
  --screenshot="$dir/report_screenshot.png" "file://$(realpath "$dir")/report.html" 2>/dev/null
python - "$dir/report_screenshot.png" <<'PY'
import sys
import numpy as np
from PIL import Image
img = np.asarray(Image.open(sys.argv[1]).convert("L"), dtype=float)
print(f"{sys.argv[1]}: {img.shape[1]}x{img.shape[0]} px, grey std {img.std():.1f}, dark share {(img < 128).mean():.3f}")
assert img.std() > 10, "blank page"
PY
