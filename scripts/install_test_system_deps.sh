#!/usr/bin/env bash
# System packages the tests need beyond the venv: headless Chromium, used by
# test/test_report_evaluation.py to render the evaluate-line HTML report and screenshot it.
# Idempotent: does nothing when chromium is already on PATH. Needs root (or sudo) and apt.
# Measured on Debian 12 (2 cores): apt-get update + install about 26 s, 115 packages, 113 MB download.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_system_deps: apt-get not found; install Chromium yourself (the report render test skips without it)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_test_system_deps: not root and no sudo; cannot install chromium (the render test will skip)" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
