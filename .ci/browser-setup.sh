#!/usr/bin/env bash
# Browser for tests/test_browser.py: Debian's Chromium (Playwright cannot download its own browsers
# here), plus the playwright Python package from requirements.txt. Called by .ci/run.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-noto-color-emoji >/dev/null
fi
python -c "import playwright" 2>/dev/null || pip install -q "$(grep -E '^playwright' requirements.txt)"
/usr/bin/chromium --version
