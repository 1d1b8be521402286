#!/usr/bin/env bash
# Idempotent installer for everything the end-to-end tests in this directory need
# on a fresh Debian machine:
#   - Debian packages: espeak-ng (speech fixtures), libopus-dev + pkg-config (Opus codec),
#     python3-venv (the human-side client's venv)
#   - the real LiveKit server, built with `go install` and cached
#   - a Python venv with the LiveKit Python SDK (livekit, livekit-api), pinned
#   - the reference MCP server @modelcontextprotocol/server-everything (npm), pinned,
#     for crates/mcp's tests and benchmark (needs node and npm: Debian's nodejs, npm)
#
# Everything is cached under $VOICE_AGENT_TEST_CACHE (default ~/.cache/voice-agent-test).
# Re-running it does nothing when everything is already present.
set -euo pipefail

CACHE="${VOICE_AGENT_TEST_CACHE:-$HOME/.cache/voice-agent-test}"
LIVEKIT_SERVER_VERSION="v1.13.5"
PY_LIVEKIT_VERSION="1.2.1"
PY_LIVEKIT_API_VERSION="1.2.2"
PY_NUMPY_VERSION="2.4.6"
MCP_EVERYTHING_VERSION="2026.8.31"

mkdir -p "$CACHE/bin"

need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists opus 2>/dev/null || need_apt+=(libopus-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

SERVER_BIN="$CACHE/bin/livekit-server-$LIVEKIT_SERVER_VERSION"
if [ ! -x "$SERVER_BIN" ]; then
    echo "setup: building livekit-server $LIVEKIT_SERVER_VERSION (go install, a few minutes)"
    if ! command -v go >/dev/null 2>&1; then
        if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; else
            echo "setup: Go >= 1.26 is required to build livekit-server" >&2; exit 1; fi
    fi
    GOBIN_DIR="$CACHE/gobin"
    mkdir -p "$GOBIN_DIR"
    GOBIN="$GOBIN_DIR" GOPATH="$CACHE/gopath" GOFLAGS="-modcacherw" \
        nice -n 10 go install "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_SERVER_VERSION"
    mv "$GOBIN_DIR/server" "$SERVER_BIN"
fi

VENV="$CACHE/venv"
PINS="livekit==$PY_LIVEKIT_VERSION livekit-api==$PY_LIVEKIT_API_VERSION numpy==$PY_NUMPY_VERSION"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PINS" ] \
    || ! "$VENV/bin/python" -c "import livekit.rtc, livekit.api, numpy" >/dev/null 2>&1; then
    echo "setup: creating the Python venv with livekit==$PY_LIVEKIT_VERSION livekit-api==$PY_LIVEKIT_API_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q $PINS
    echo "$PINS" > "$VENV/.pins"
fi

# The MCP reference server, installed from npm into its own prefix (no global install).
NPM_DIR="$CACHE/npm"
MCP_EVERYTHING_DIR="$NPM_DIR/node_modules/@modelcontextprotocol/server-everything"
mcp_everything_version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$MCP_EVERYTHING_DIR/package.json" 2>/dev/null
}
if [ ! -f "$MCP_EVERYTHING_DIR/dist/index.js" ] || [ "$(mcp_everything_version)" != "$MCP_EVERYTHING_VERSION" ]; then
    echo "setup: installing @modelcontextprotocol/server-everything@$MCP_EVERYTHING_VERSION (npm)"
    mkdir -p "$NPM_DIR"
    [ -f "$NPM_DIR/package.json" ] || echo '{"name":"voice-agent-test-npm","private":true}' > "$NPM_DIR/package.json"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --save-exact --loglevel=error \
        "@modelcontextprotocol/server-everything@$MCP_EVERYTHING_VERSION"
    if [ "$(mcp_everything_version)" != "$MCP_EVERYTHING_VERSION" ]; then
        echo "setup: server-everything $MCP_EVERYTHING_VERSION did not install into $NPM_DIR" >&2; exit 1
    fi
fi

echo "setup: ok (server $SERVER_BIN, venv $VENV, MCP server $MCP_EVERYTHING_DIR)"
