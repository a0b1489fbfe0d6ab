#!/usr/bin/env bash
# Proves that csrc/cuda/*.cu compiles and links into dnas_fast._C (no GPU needed): builds the extension with a CUDA
# build of torch in a separate venv (the project's CPU torch wheel cannot build CUDA extensions), for one arch, into a
# temporary folder (the repo's own dnas_fast/_C*.so is left alone), then loads it and checks that every op has a CUDA
# kernel registered.
#   bash csrc/check_cuda_compile.sh
# Settings (environment): DNAS_CUDA_VENV (default /tmp/dnas-cuda-venv, reused when it already has a CUDA torch),
# DNAS_CUDA_TORCH (default 2.14.1: its cu130 wheel matches nvcc 13.0 and lies in the local pip cache),
# CUDA_HOME (default /usr/local/cuda-13.0: /usr/local/bin/nvcc is a wrapper around it, and torch's auto-detection
# from that wrapper picks a folder without lib64/libcudart), TORCH_CUDA_ARCH_LIST (default 9.0).
# Measured on the 2-core dev machine (shared with other jobs): 5 min from scratch (venv 50-130 s from the local
# wheel cache, build about 170 s), 2.5 min with the venv reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DNAS_CUDA_VENV:-/tmp/dnas-cuda-venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export PATH="$CUDA_HOME/bin:$PATH"
unset DNAS_FAST_NO_EXT DNAS_FAST_NO_CUDA
start=$SECONDS

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  echo "[check_cuda_compile] creating $VENV with torch==${DNAS_CUDA_TORCH:-2.14.1} (CUDA build)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==${DNAS_CUDA_TORCH:-2.14.1}" setuptools wheel ninja numpy
fi
echo "[check_cuda_compile] venv ready after $((SECONDS - start)) s: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"

OUT="$(mktemp -d /tmp/dnas-cuda-build.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
# Build from a copy of setup.py + csrc/. torch >= 2.14 headers need C++20, and setup.py's explicit -std=c++17 for
# the C++ sources would override torch's own default (-std=c++20): drop it in the copy.
mkdir -p "$OUT/src"
cp -r "$ROOT/setup.py" "$ROOT/csrc" "$OUT/src/"
sed -i 's/"-std=c++17", *//' "$OUT/src/setup.py"
cd "$OUT/src"
"$VENV/bin/python" setup.py -q build_ext --build-temp "$OUT/temp" --build-lib "$OUT/lib"
echo "[check_cuda_compile] built after $((SECONDS - start)) s"

SO="$(find "$OUT/lib" -name '_C*.so' | head -n 1)"
"$VENV/bin/python" - "$SO" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ["pool_stats", "pool_combine", "pool_grad_stats", "pool_combine_backward"]
missing = [
    f"{op}[{key}]"
    for op in ops
    for key in ("CPU", "CUDA")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dnas_fast::{op}", key)
]
if missing:
    sys.exit(f"[check_cuda_compile] FAILED: no kernel registered for {', '.join(missing)}")
print(f"[check_cuda_compile] OK: {len(ops)} ops with CPU and CUDA kernels in {sys.argv[1].rsplit('/', 1)[-1]}")
PY
echo "[check_cuda_compile] passed in $((SECONDS - start)) s"
