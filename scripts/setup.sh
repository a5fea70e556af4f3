#!/usr/bin/env bash
# Create .venv and install pc3d into it (editable).
#   bash scripts/setup.sh            CPU install (torch==2.13.0: the CPU build on pc3d's reference machines)
#   bash scripts/setup.sh --test     ... plus the test tools and the optional accelerators the tests hold to
#                                    the pure-torch paths (spconv on CPU, open3d-cpu normals)
#   bash scripts/setup.sh --cuda     ... plus spconv for CUDA 12 (see README "GPU install")
# PC3D_TORCH overrides the torch requirement (e.g. PC3D_TORCH="torch==2.13.0+cu126" with your index).
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
extras=""
cuda=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    --cuda) cuda=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test / --cuda)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
.venv/bin/python -m pip install -q "${PC3D_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".${extras}"
if [ "$cuda" = 1 ]; then
  .venv/bin/python -m pip install -q "${PC3D_SPCONV:-spconv-cu120==2.3.6}"
elif [ -n "$extras" ]; then
  # spconv-cu120 2.3.6 is the build that is correct on CPU (ConvAlgo.Native); it has wheels for Python <= 3.11.
  # (The CPU-only "spconv" 2.3.8 gives wrong numbers with 2 threads: never install it.)
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
    .venv/bin/python -m pip install -q "spconv-cu120==2.3.6"
  else
    echo "setup.sh: no spconv-cu120 wheel for this Python; the spconv agreement tests need Python <= 3.11" >&2
  fi
  if [ "$(uname -sm)" = "Linux x86_64" ]; then
    .venv/bin/python -m pip install -q "open3d-cpu==0.19.0"
  fi
fi
.venv/bin/python -c "import torch, pc3d; print(f'pc3d {pc3d.__version__} with torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
