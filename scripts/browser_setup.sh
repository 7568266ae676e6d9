#!/usr/bin/env bash
# What the browser test (tests/browser/page_test.py) needs besides charrnn: Debian's chromium,
# chromium-driver and a font with Chinese characters for the screenshot (fonts-wqy-microhei), installed with
# apt when missing and running as root (as in CI), and Selenium in the project's virtual environment.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || [ -z "$(fc-list :lang=zh 2>/dev/null)" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the browser test needs Chromium, its driver and a Chinese font: sudo apt-get install chromium chromium-driver fonts-wqy-microhei" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-wqy-microhei >/dev/null
fi
if ! .venv/bin/python -c "import selenium" 2>/dev/null; then
    .venv/bin/pip install -q selenium==4.40.0
fi
