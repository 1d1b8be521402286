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

# The LiveKit server (built from its Go module), the Python test client and
# the MCP reference server (@modelcontextprotocol/server-everything, npm).
tests/setup.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

# Model files for the local speech engines (idempotent).
cargo run -q -p voice-agent -- download-files

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# A program with cloud speech only (voice-agent without its default feature
# `local-speech`) builds, and compiles none of the local engines: no candle,
# no ort, no espeak-ng crate.
cargo check -q -p voice-agent --no-default-features
cloud_tree="$(cargo tree -p voice-agent --no-default-features -e normal --prefix none)"
local_crates="$(grep -E '^(candle-[a-z0-9_-]+|ort|ort-sys|[a-z0-9_-]*espeak[a-z0-9_-]*) v' <<<"$cloud_tree" | sed 's/ (\*)$//' | sort -u)" || true
if [ -n "$local_crates" ]; then
    echo "run.sh: voice-agent --no-default-features still depends on local speech engines:" >&2
    echo "$local_crates" >&2
    exit 1
fi

cargo test --workspace
