#!/usr/bin/env bash
# The main job, set-up included: builds efcomm into the virtual environment .venv (the real
# wheel build, pip install --no-build-isolation .) and runs `efcomm demo`: 4 ranks train a small
# MLP on scikit-learn's digits with DDP uncompressed, with efcomm's TopK + EF21 hook and with
# TopK alone; a table of accuracy, bytes and time, and a plot (efcomm-demo.png).
# Usage: bash scripts/demo.sh [demo options]    (see: efcomm demo --help)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EFCOMM_ROOT"

use_venv "$EFCOMM_ROOT/.venv"
echo "==== set-up: pip install . into .venv ===="
pip_install "${EFCOMM_BUILD_DEPS[@]}" "$EFCOMM_TORCH"
install_efcomm
echo "==== efcomm demo $* ===="
exec efcomm demo "$@"
