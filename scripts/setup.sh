#!/usr/bin/env bash
# Installs everything ctai needs on Debian 12 (run as root, or with sudo available):
# Debian packages, then a Python 3.11 virtual environment in .venv with ctai in it.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(python3-venv orthanc orthanc-python dcmtk dicom3tools)
# Test-only: pixelmed-apps and a headless JRE (PixelMed's DICOM SR validator); chromium, zbar-tools (pages, QR codes); iproute2 (loopback in the Orthanc tests' namespace);
# fonts-wqy-microhei (Chinese in the pages' screenshots); orthanc-dicomweb, curl (STOW-RS test); openssl (a self-signed certificate);
# redis-server (the shared-queue tests; production installs it on the machine that holds the queue)
[ "${1:-}" = "--test" ] && DEBIAN_PACKAGES+=(chromium zbar-tools iproute2 fonts-wqy-microhei orthanc-dicomweb curl openssl redis-server
                                          nginx libnss3-tools pixelmed-apps default-jre-headless)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
extras="."; [ "${1:-}" = "--test" ] && extras=".[test]"
stamp=".venv/.ctai-installed-$(sha1sum pyproject.toml | cut -c1-12)${1:-}"
if [ ! -e "$stamp" ]; then
  echo "setup: installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$extras"
  touch "$stamp"
fi

# The networks converted for the configured backend into the data dir (`ctai prepare`, 30-60 s the
# first time, then a check of the cache), so that `ctai serve`'s first start does not convert them.
.venv/bin/python -m ctai.cli prepare
