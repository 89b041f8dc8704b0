#!/usr/bin/env bash
# The main job, set-up included: builds efcomm into the virtual environment .venv (the real
# wheel build, pip install --no-build-isolation .) and runs the compressor benchmark.
# Usage: bash scripts/demo.sh [benchmark options]    (see: efcomm bench compressors --help)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EFCOMM_ROOT"

use_venv "$EFCOMM_ROOT/.venv"
echo "==== set-up: pip install . into .venv ===="
pip_install "${EFCOMM_BUILD_DEPS[@]}" "$EFCOMM_TORCH"
install_efcomm
echo "==== efcomm bench compressors $* ===="
exec efcomm bench compressors "$@"
