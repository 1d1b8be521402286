#!/usr/bin/env bash
# The project's test command. On a fresh Debian machine it installs what the
# tests need, then checks formatting and lints and runs every test of the
# workspace. Nothing is skipped: a test whose prerequisite is missing fails.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# Debian packages: speech fixtures and engines (espeak-ng), Opus, pkg-config,
# Python with venv and pip (model downloads, the LiveKit Python client), ALSA
# headers (cpal) and PulseAudio with its tools (the console's device tests).
need=()
for pkg in espeak-ng libespeak-ng-dev libopus-dev pkg-config python3-venv python3-pip libasound2-dev pulseaudio pulseaudio-utils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "run.sh: installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# The LiveKit server (built from its Go module) and the Python test client.
tests/setup.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

# Model files for the local speech engines (idempotent).
cargo run -q -p voice-agent -- download-files

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
