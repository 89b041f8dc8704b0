#!/usr/bin/env bash
# The device check of the GPU path (issue 8), one script for a machine with an NVIDIA GPU:
#   1. builds efcomm with its CUDA kernels for this machine's GPU (build/gpu), the GPU tests, the
#      kernel benchmark and the Python module;
#   2. runs the GPU tests: C++ (efcomm_gpu_tests) and Python (tests/python/test_cuda.py);
#   3. times every kernel on 64M float32 against a device-to-device copy and torch.topk measured
#      in the same run, with where one traced call's time goes (kernels, checksum, syncs) and the
#      streaming calls at four sizes split into a fixed cost and a rate, and prints the table
#      (with the targets) last; $OUT/summary.md has it all for docs/benchmarks.md.
# Usage: bash bench/gpu_check.sh
# Environment: OUT (logs and the table; default build/gpu-check), JOBS (default: all cores),
# CUDA_ARCHS (default native), PYTHON (default python3: the one with torch), SIZE (elements),
# PROFILE=1 (also profile one call of each kernel with nsys and the checksum kernel with ncu,
# where installed: about 2 minutes more).
# Fits in 8 minutes on one H100 (most of it the build). Needs cmake, ninja, nvcc, pybind11 and a
# GoogleTest (installed, or its source in .gpu-deps/googletest or /usr/src/googletest).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-build/gpu-check}
mkdir -p "$out"
jobs=${JOBS:-$(nproc)}
py=${PYTHON:-python3}
size=${SIZE:-67108864}
bdir=build/gpu
status=0
t0=$SECONDS
stage() { printf '\n==== %s (%ds) ====\n' "$*" $((SECONDS - t0)); }

stage "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
  { echo "gpu_check: nvidia-smi failed: no NVIDIA GPU or driver here"; exit 2; }

stage "build"
gtest=()
for src in .gpu-deps/googletest /usr/src/googletest; do
  [[ -f $src/CMakeLists.txt ]] && { gtest=(-DEFCOMM_GTEST_SOURCE="$PWD/$src"); break; }
done
cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEFCOMM_BUILD_TESTS=ON -DEFCOMM_CUDA=ON \
  -DEFCOMM_PYTHON=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-native}" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$py")" \
  "${gtest[@]}" >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
cmake --build "$bdir" -j "$jobs" --target efcomm_gpu_tests efcomm_gpu_bench _core >>"$out/build.log" 2>&1 ||
  { grep -E "error|Error" "$out/build.log" | head -40; tail -20 "$out/build.log"; exit 1; }

stage "C++ GPU tests"
timeout 240 "$bdir/tests/cpp/efcomm_gpu_tests" --gtest_brief=1 2>&1 | tee "$out/gpu_tests.log" | tail -60
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

stage "Python GPU tests"
pkg="$bdir/py/efcomm"
rm -rf "$bdir/py" && mkdir -p "$bdir/py" && cp -r python/efcomm "$pkg" && cp "$bdir"/_core*.so "$pkg/"
PYTHONPATH="$PWD/$bdir/py" timeout 420 "$py" -X faulthandler -m pytest tests/python/test_cuda.py -q -rfE --tb=short \
  -p no:cacheprovider 2>&1 | tee "$out/test_cuda.log" | tail -40
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

stage "kernel benchmark"
# Where the time goes: one traced call of each (EFCOMM_CUDA_TRACE prints each phase's GPU time).
EFCOMM_CUDA_TRACE=1 timeout 60 "$bdir/efcomm_gpu_bench" --size "$size" --repeats 1 >/dev/null 2>"$out/trace.txt" ||
  echo "gpu_check: the traced run failed (see trace.txt)"
timeout 180 "$bdir/efcomm_gpu_bench" --size "$size" >"$out/gpu_bench.json" 2>"$out/gpu_bench.err" ||
  { cat "$out/gpu_bench.err"; status=1; }
PYTHONPATH="$PWD/$bdir/py" timeout 120 "$py" bench/gpu/gpu_report.py "$out/gpu_bench.json" --trace "$out/trace.txt" \
  --out "$out/gpu_table.md" ||
  status=1
if [[ ${PROFILE:-0} == 1 ]]; then
  # Where the checksum's fixed ~20 us goes (docs/benchmarks.md bench:gpu): one call of each
  # compressor under Nsight Systems (kernel times and gaps, with the host's launch times) and the
  # seal kernel under Nsight Compute (occupancy, stalls), where the tools are installed.
  stage "profile"
  if command -v nsys >/dev/null; then
    timeout 150 nsys profile -t cuda --sample=none --cpuctxsw=none --force-overwrite true -o "$out/profile" \
      "$bdir/efcomm_gpu_bench" --size "$size" --repeats 1 >/dev/null 2>"$out/nsys.err" &&
      timeout 90 nsys stats -q --report cuda_gpu_trace,cuda_api_trace --format csv --force-export true \
        -o "$out/profile" "$out/profile.nsys-rep" >/dev/null 2>>"$out/nsys.err" ||
      echo "gpu_check: nsys failed (see nsys.err)"
    rm -f "$out"/profile.sqlite
  else
    echo "gpu_check: no nsys here"
  fi
  if command -v ncu >/dev/null; then
    timeout 150 ncu -k regex:sealKernel -c 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis "$bdir/efcomm_gpu_bench" --size "$size" --repeats 1 \
      >"$out/ncu_seal.txt" 2>&1 || echo "gpu_check: ncu failed (see ncu_seal.txt)"
  else
    echo "gpu_check: no ncu here"
  fi
fi
# The summary for docs/benchmarks.md (bench:gpu): the machine, the tests' results, the tables.
{
  echo "Measured $(date -u '+%Y-%m-%d %H:%M') UTC with \`bash bench/gpu_check.sh\` on $(nvidia-smi \
    --query-gpu=name,driver_version --format=csv,noheader | head -1) (CUDA_ARCHS=${CUDA_ARCHS:-native})."
  echo "C++ GPU tests: $(grep -aE '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu_tests.log" | tr -s ' ' | sed 's/\.$//' | paste -sd ';' -)."
  echo "Python GPU tests: $(grep -aE '(passed|failed|error)' "$out/test_cuda.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')."
  echo
  cat "$out/gpu_table.md" 2>/dev/null
} >"$out/summary.md"
echo "summary for docs/benchmarks.md: $out/summary.md"
stage "done: exit $status"
exit $status
