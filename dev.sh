#!/usr/bin/env bash
# dnas_fast developer entry point; every command sets up its own virtual environment first.
#   ./dev.sh search [extra dnas-fast search flags]   a real DARTS search on the built-in digits data
#   ./dev.sh test [pytest args]                      the full test suite, on DNAS_FAST_TEST_WORKERS (2) xdist workers
#   ./dev.sh test --fast [pytest args]               the fast tier: every test function once, slow ones left out
#   ./dev.sh setup                                   only create/refresh the environment
#   ./dev.sh bench-loader [args]                     bench/bench_loader.py against torchvision, in .venv-bench-loader
# DNAS_FAST_VENV picks the venv folder (default .venv); DNAS_FAST_TORCH the torch requirement
# (default torch==2.13.0, a CPU build; use e.g. "torch" for a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${DNAS_FAST_VENV:-.venv}"

setup() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -c "import torch" 2>/dev/null || pip install -q "${DNAS_FAST_TORCH:-torch==2.13.0}"
  # Rebuild the package (and its C++ extension) only when its build inputs changed.
  stamp="$VENV/.dnas_fast-build"
  want="$(cat setup.py pyproject.toml csrc/*.* csrc/*/* 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! python -c "import dnas_fast" 2>/dev/null; then
    pip install -q setuptools wheel ninja pybind11
    pip install -q --no-build-isolation -e ".[test,triton]"
    echo "$want" >"$stamp"
  fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  setup) setup ;;
  # -n: pytest-xdist workers (the test extra); 0 runs in this process (a debugger, -x with a clean traceback)
  test) setup && python -m pytest -n "${DNAS_FAST_TEST_WORKERS:-2}" "$@" ;;
  search)
    setup
    # One intra-op thread: these tensors are tiny, and 2 OpenMP threads on a busy 2-core machine were 6x slower.
    python -m dnas_fast search --space darts --strategy darts --data digits \
      --space-args '{"C": 8, "layers": 5}' --epochs 6 --batch-size 64 --seed 0 --threads 1 \
      --out "runs/digits-darts-$(date +%Y%m%d-%H%M%S)" "$@"
    ;;
  bench-loader)
    # torchvision pins its torch, so it gets a venv of its own; the package is used from the source tree.
    [ -x .venv-bench-loader/bin/python ] || python3 -m venv .venv-bench-loader
    .venv-bench-loader/bin/python -c "import torchvision" 2>/dev/null ||
      .venv-bench-loader/bin/pip install -q "${DNAS_FAST_TORCH:-torch==2.14.1}" torchvision==0.29.1 pillow numpy
    PYTHONPATH=. .venv-bench-loader/bin/python bench/bench_loader.py "$@"
    ;;
  *) echo "usage: ./dev.sh {search|test|setup|bench-loader} [args]" >&2; exit 2 ;;
esac
