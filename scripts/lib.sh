# shellcheck shell=bash disable=SC2034
# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run): a virtual environment
# in the repository root and the package installed into it through the real wheel build.

EFCOMM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# For the sourcing scripts: what --no-build-isolation needs to build the wheel, plus the
# runtime dependencies numpy and (the simulator's) scikit-learn and matplotlib; torch pinned to the
# release the tests are run with. mpich (its mpi.h, libmpi and mpiexec) goes in with the build
# tools, before the wheel is built, so that the build finds mpi.h and has the MPI backend;
# mpi4py for ef.Communicator.mpi.
EFCOMM_BUILD_DEPS=(scikit-build-core pybind11 ninja cmake numpy scikit-learn matplotlib mpich mpi4py)
EFCOMM_TORCH="torch==2.13.0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

die() {
  echo "error: $*" >&2
  exit 1
}

python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1
}

# Creates the virtual environment DIR unless a working one is there, and activates it (PATH).
use_venv() {
  local dir=$1 py
  if ! python_ok "$dir/bin/python"; then
    for py in ${PYTHON:-} python3 python; do
      python_ok "$py" && break
      py=
    done
    [[ -n $py ]] || die "Python 3.10 or newer not found (set PYTHON=/path/to/python3)"
    rm -rf "$dir"
    "$py" -m venv "$dir" ||
      die "'$py -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  export VIRTUAL_ENV=$dir
  export PATH="$dir/bin:$PATH"
  hash -r
}

pip_install() {
  python -m pip install -qq --disable-pip-version-check "$@"
}

# Builds the wheel with scikit-build-core (incremental in build/<wheel tag>) and installs it.
install_efcomm() {
  pip_install --no-build-isolation "$EFCOMM_ROOT"
}
