#!/usr/bin/env bash
# Installs the Debian packages vistream needs, when missing: python3-venv, python3-dev and a C
# compiler (for the virtualenv and to build PyGObject), GStreamer and its introspection data, and
# chromium for the web UI tests.
# Without apt (or without root) it says so and carries on: files then decode through PyAV.
set -euo pipefail
packages=(
  python3-venv python3-dev gcc
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  gir1.2-gst-rtsp-server-1.0 libgirepository1.0-dev libcairo2-dev pkg-config ffmpeg
  chromium mosquitto
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: apt-get not found; install GStreamer yourself (${missing[*]}) or files will use PyAV" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "warning: not root and no sudo; cannot install ${missing[*]}" >&2
    exit 0
  fi
fi
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
