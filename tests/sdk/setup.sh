#!/usr/bin/env bash
# Install the official SDKs used by tests/sdk_e2e.rs (OpenAI), tests/messages_sdk.rs (Anthropic),
# tests/responses_sdk.rs (OpenAI, and the Vercel AI SDK `ai` + `@ai-sdk/openai`) and
# tests/mcp_sdk.rs (MCP), the RFC 8785 library of tests/feedback_routing.rs, and
# playwright-core, the browser driver of tests/ui.rs (it drives Debian's chromium; it
# downloads no browser):
#   - Python: a venv in target/sdk-venv with tests/sdk/requirements.txt
#   - Node:   tests/sdk/node_modules from tests/sdk/package.json (+ package-lock.json)
# Idempotent: a stamp holding the hash of the pinned requirements skips work already done.
# Uses only PyPI and the npm registry.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sdk="$root/tests/sdk"
venv="$root/target/sdk-venv"
mkdir -p "$root/target"

hash_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

# ---- Python ----
py_stamp="$venv/.loopgate-stamp"
py_want="$(hash_of "$sdk/requirements.txt")"
if [[ -x "$venv/bin/python" && -f "$py_stamp" && "$(cat "$py_stamp")" == "$py_want" ]] \
   && "$venv/bin/python" -c 'import openai, mcp, anthropic, rfc8785' 2>/dev/null; then
  echo "sdk setup: python venv up to date ($venv)"
else
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || { echo "sdk setup: $python not found (install python3 and python3-venv)" >&2; exit 1; }
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$sdk/requirements.txt"
  echo "$py_want" > "$py_stamp"
  echo "sdk setup: installed $("$venv/bin/python" -c 'import openai; print("openai", openai.__version__)')"
fi

# ---- Node ----
node_stamp="$sdk/node_modules/.loopgate-stamp"
lock=()
[[ -f "$sdk/package-lock.json" ]] && lock=("$sdk/package-lock.json")
node_want="$(hash_of "$sdk/package.json" "${lock[@]}")"
if [[ -f "$node_stamp" && "$(cat "$node_stamp")" == "$node_want" && -d "$sdk/node_modules/openai" && -d "$sdk/node_modules/@ai-sdk/openai" && -d "$sdk/node_modules/playwright-core" ]]; then
  echo "sdk setup: node_modules up to date ($sdk/node_modules)"
else
  command -v npm >/dev/null || { echo "sdk setup: npm not found (install nodejs and npm)" >&2; exit 1; }
  if [[ -f "$sdk/package-lock.json" ]]; then
    (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd "$sdk" && npm install --no-audit --no-fund --loglevel=error)
  fi
  # Recompute: `npm install` may have just written the lock file.
  lock=()
  [[ -f "$sdk/package-lock.json" ]] && lock=("$sdk/package-lock.json")
  hash_of "$sdk/package.json" "${lock[@]}" > "$node_stamp"
  echo "sdk setup: installed openai (node) $(node -e 'console.log(require(process.argv[1]).version)' "$sdk/node_modules/openai/package.json" 2>/dev/null || true)"
fi
