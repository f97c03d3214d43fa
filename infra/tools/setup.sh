#!/usr/bin/env bash
# Installs the infrastructure validators into .venv-infra (idempotent; `make infra-tools` runs it):
#   - checkov, pinned in infra/tools/requirements.txt, in its own venv (its pins conflict with .venv's);
#   - cloud-init from Debian's package, unpacked into .venv-infra/cloud-init and run by .venv-infra/bin/cloud-init
#     with the venv's Python. The package is never installed on the machine: installing it would add boot
#     services (cloud-init-local, cloud-config, ...) to a CI host, and only `cloud-init schema` is needed.
# Needs python3 >= 3.9 and apt-get (Debian/Ubuntu); runs unattended (CI=true, no stdin). Work already done is
# skipped: a stamp newer than this script and the requirements means nothing to do.
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SCRIPT")/../.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-infra"
REQUIREMENTS="$ROOT/infra/tools/requirements.txt"
STAMP="$VENV/.installed"
CLOUD_INIT_DIR="$VENV/cloud-init"
CLOUD_INIT_PKG="$CLOUD_INIT_DIR/usr/lib/python3/dist-packages"

if [[ -f "$STAMP" && "$STAMP" -nt "$REQUIREMENTS" && "$STAMP" -nt "$SCRIPT" \
      && -x "$VENV/bin/checkov" && -x "$VENV/bin/cloud-init" ]]; then
    echo "infra tools: up to date ($VENV)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"

if [[ ! -f "$CLOUD_INIT_PKG/cloudinit/__init__.py" ]]; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
        echo "infra tools: cloud-init comes from Debian's package; this needs apt-get and dpkg-deb" >&2
        exit 1
    }
    download="$(mktemp -d)"
    trap 'rm -rf "$download"' EXIT
    # apt-get download needs package lists; a fresh CI machine may have none yet (apt-get update needs root).
    if ! (cd "$download" && apt-get download -q cloud-init 2>/dev/null); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        (cd "$download" && apt-get download -q cloud-init)
    fi
    rm -rf "$CLOUD_INIT_DIR"
    dpkg-deb -x "$download"/cloud-init_*.deb "$CLOUD_INIT_DIR"
    echo "infra tools: $(basename "$download"/cloud-init_*.deb) unpacked into $CLOUD_INIT_DIR"
fi

cat > "$VENV/bin/cloud-init" <<WRAPPER
#!/bin/sh
# Debian's cloud-init, unpacked by infra/tools/setup.sh, run with .venv-infra's Python.
PYTHONPATH="$CLOUD_INIT_PKG" exec "$VENV/bin/python" -m cloudinit.cmd.main "\$@"
WRAPPER
chmod 0755 "$VENV/bin/cloud-init"

"$VENV/bin/checkov" --version >/dev/null
"$VENV/bin/cloud-init" --version >/dev/null
touch "$STAMP"
echo "infra tools: checkov $("$VENV/bin/checkov" --version), $("$VENV/bin/cloud-init" --version 2>&1) in $VENV"
