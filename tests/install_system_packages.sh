#!/usr/bin/env bash
# System packages some tests use: PostgreSQL behind `mlflow server` (tests/test_tracking_server.py) and
# headless Chromium for the HTML report (tests/test_aggregate.py). Without them those tests skip and say why.
set -euo pipefail
packages=(postgresql chromium fonts-liberation)
if ! command -v apt-get >/dev/null; then
    echo "no apt-get here: install ${packages[*]} with your package manager, or the tests needing them skip" >&2
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
