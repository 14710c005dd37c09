# Sourced by scripts/run and scripts/test: make .venv with a Python >= 3.11 and install the package into it.
# Re-installs only when pyproject.toml (or the extras asked for) changed since the last install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ASSISTANT_VENV:-$root/.venv}
pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "assistant needs Python 3.11 or newer; install it (macOS: brew install python@3.12)" >&2
  return 1
}
ensure_venv() {  # $1: extras, e.g. "dev"
  local extras=$1 stamp="$venv/.assistant-installed"
  local want; want="$extras $(cksum < "$root/pyproject.toml")"
  if [ ! -x "$venv/bin/python" ]; then
    local py; py=$(pick_python) || exit 1  # "$(pick_python)" -m venv ran "" when it failed: ": command not found"
    "$py" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$root${extras:+[$extras]}"
    echo "$want" > "$stamp"
  fi
}
