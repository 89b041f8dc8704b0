#!/usr/bin/env bash
# The whole test suite, set-up included (the command .ci/run calls):
#   1. a virtual environment .venv-test with the build and test tools, the package installed
#      into it by the real wheel build (pip install --no-build-isolation .);
#   2. the C++ tests (GoogleTest) in a Release build, build/tests;
#   3. the C++ tests again under AddressSanitizer + UndefinedBehaviorSanitizer, build/asan;
#   4. the Python tests (pytest) against the installed package.
# Usage: bash scripts/test.sh [--fast]    (--fast skips the sanitizer build)
# Environment: JOBS (parallel build jobs, default 2), PYTHON (interpreter for the venv).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EFCOMM_ROOT"

sanitize=1
for arg in "$@"; do
  case $arg in
    --fast) sanitize=0 ;;
    -h | --help)
      sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (usage: bash scripts/test.sh [--fast])" ;;
  esac
done
jobs=${JOBS:-2}
export CMAKE_BUILD_PARALLEL_LEVEL=$jobs
ctest_timeout=600 # seconds per test, for tests that do not set their own

summary=()
failed=0
suite_start=$SECONDS

banner() {
  printf '\n==== %s ====\n' "$*"
}

# step NAME COMMAND...: runs a step in a subshell (so that errexit holds inside it), records
# its result and time; the caller decides whether later steps still run.
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  banner "$name"
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    summary+=("$(printf '  %-7s %-30s %4ds' ok "$name" "$took")")
  else
    summary+=("$(printf '  %-7s %-30s %4ds  (exit %d)' FAILED "$name" "$took" "$rc")")
    failed=1
  fi
  return $rc
}

finish() {
  banner "summary"
  printf '%s\n' "${summary[@]}"
  printf '  total %ds\n' $((SECONDS - suite_start))
  if ((failed)); then
    echo "efcomm test suite: FAILED"
    exit 1
  fi
  echo "efcomm test suite: all steps ok"
  exit 0
}

# ---- set-up -------------------------------------------------------------------------------
setup_python() {
  python --version
  pip_install "${EFCOMM_BUILD_DEPS[@]}" pytest pytest-timeout hypothesis "$EFCOMM_TORCH"
  install_efcomm
  python -c 'import efcomm; print("installed efcomm", efcomm.__version__)'
}

gtest_found() {
  local probe=build/gtest-probe
  mkdir -p "$probe"
  cat >"$probe/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(gtest_probe LANGUAGES CXX)
find_package(GTest CONFIG QUIET)
if(NOT GTest_FOUND)
  find_package(GTest REQUIRED)
endif()
EOF
  rm -rf "$probe/build"
  cmake -S "$probe" -B "$probe/build" -G Ninja >"$probe/log.txt" 2>&1
}

# GoogleTest from the system; installed with apt-get when we may, else a clear message.
setup_gtest() {
  if gtest_found; then
    echo "GoogleTest found"
    return 0
  fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "GoogleTest not found; installing libgtest-dev with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q libgtest-dev >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q libgtest-dev >/dev/null; } ||
      die "apt-get install libgtest-dev failed"
    gtest_found && return 0
  fi
  cat build/gtest-probe/log.txt >&2
  die "GoogleTest not found. Install it (Debian/Ubuntu: sudo apt-get install libgtest-dev;" \
    "Fedora: sudo dnf install gtest-devel; macOS: brew install googletest) or point" \
    "CMAKE_PREFIX_PATH / GTEST_ROOT at an installed GoogleTest, then run this again."
}

# ---- test steps -----------------------------------------------------------------------------
# configure DIR CMAKE_ARGS...: a Ninja build of the C++ tests in DIR; a cache from another
# generator or source tree (a moved checkout) is discarded rather than failing the configure.
configure() {
  local dir=$1 cache=$1/CMakeCache.txt
  shift
  if [[ -f $cache ]] && ! { grep -qx "CMAKE_GENERATOR:INTERNAL=Ninja" "$cache" &&
    grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$EFCOMM_ROOT" "$cache"; }; then
    rm -rf "$dir"
  fi
  cmake -S . -B "$dir" -G Ninja -DEFCOMM_BUILD_TESTS=ON "$@"
}

cpp_tests() {
  local dir=$1
  shift
  configure "$dir" "$@"
  cmake --build "$dir" -j "$jobs"
  ctest --test-dir "$dir" --output-on-failure --timeout "$ctest_timeout" -j "$jobs"
}

# LeakSanitizer needs to stop the process's threads (ptrace-like); some containers forbid it.
# Probe once: keep leak detection wherever it works, and say so where it cannot.
leak_detection() {
  local dir=build/asan-probe
  mkdir -p "$dir"
  cat >"$dir/leak.cpp" <<'EOF'
#include <cstdlib>
int main() {
  void* volatile p = std::malloc(7);
  p = nullptr;
  return p != nullptr;
}
EOF
  "${CXX:-c++}" -fsanitize=address "$dir/leak.cpp" -o "$dir/leak" 2>/dev/null || return 1
  ASAN_OPTIONS=detect_leaks=1 "$dir/leak" >"$dir/leak.log" 2>&1 && return 1
  grep -q "detected memory leaks" "$dir/leak.log"
}

sanitizer_tests() {
  local leaks=1
  if ! leak_detection; then
    leaks=0
    tail -n 3 build/asan-probe/leak.log
    echo "note: LeakSanitizer missed a deliberate leak here (it suspends threads with ptrace," \
      "which some containers forbid): running ASan+UBSan with detect_leaks=0"
  fi
  local asan=(halt_on_error=1 "detect_leaks=$leaks" detect_stack_use_after_return=1
    check_initialization_order=1 strict_init_order=1)
  ASAN_OPTIONS=$(IFS=:; echo "${asan[*]}")
  export ASAN_OPTIONS
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  cpp_tests build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEFCOMM_SANITIZE=ON
}

python_tests() {
  python -m pytest tests/python -q -ra --timeout=900
}

# ---- run ------------------------------------------------------------------------------------
banner "set-up: virtual environment .venv-test"
use_venv "$EFCOMM_ROOT/.venv-test"
step "set-up: pip install ." setup_python || finish
step "set-up: GoogleTest" setup_gtest || finish
step "C++ tests (Release)" cpp_tests build/tests -DCMAKE_BUILD_TYPE=Release -DEFCOMM_SANITIZE=OFF || true
if ((sanitize)); then
  step "C++ tests (ASan+UBSan)" sanitizer_tests || true
else
  summary+=("$(printf '  %-7s %-30s  (--fast)' skipped "C++ tests (ASan+UBSan)")")
fi
step "Python tests (pytest)" python_tests || true
finish
