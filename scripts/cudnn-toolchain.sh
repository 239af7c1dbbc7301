#!/usr/bin/env bash
# Installs the cuDNN headers that the fused-attention shim (kernels/cudnn_sdpa.cpp) compiles against, from PyPI
# wheels, into a cache venv, and exports their include paths for build.rs:
#
#   source ../shared/cuda/toolchain.sh      # CUDA 13.0 (nvcc, cuda_runtime_api.h, ...)
#   source scripts/cudnn-toolchain.sh       # then: cargo build --features cuda
#
# Sets CUDNN_FRONTEND_INCLUDE (the header-only cuDNN frontend, graph API) and CUDNN_INCLUDE (cudnn.h and the
# backend headers). Nothing here is linked: the shim loads libcudnn.so.9 at run time (dlopen, through the
# frontend's NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING), so a binary built with these headers runs, with our own
# kernels, where no cuDNN is installed. The first run downloads about 0.9 GB (the cuDNN wheel carries its
# libraries, which only a GPU machine would use); later runs need no network.
#
# Pinned: cuDNN 9.28.1 (CUDA 13 build; the shim requires at least 9.15.1 at run time, the release that fixed
# sequence lengths that are not a multiple of 128) and frontend 1.32.0 (its graph API; it adapts to the loaded
# cuDNN's version at run time).
set -u
CUDNN_TOOLCHAIN_DIR=${CUDNN_TOOLCHAIN_DIR:-$HOME/.cache/cudnn-toolchain}
_cudnn_site() { ls -d "$CUDNN_TOOLCHAIN_DIR"/venv/lib/python3*/site-packages 2>/dev/null | head -1; }
_s=$(_cudnn_site)
if [ -z "$_s" ] || [ ! -f "$_s/include/cudnn_frontend.h" ] || [ ! -f "$_s/nvidia/cudnn/include/cudnn.h" ]; then
  { python3 -m venv "$CUDNN_TOOLCHAIN_DIR/venv" &&
    "$CUDNN_TOOLCHAIN_DIR/venv/bin/pip" install -q --no-deps \
      nvidia-cudnn-frontend==1.32.0 nvidia-cudnn-cu13==9.28.1.4; } || {
    echo "cudnn-toolchain.sh: pip install failed" >&2; set +u; return 1 2>/dev/null || exit 1; }
  _s=$(_cudnn_site)
fi
export CUDNN_FRONTEND_INCLUDE=$_s/include
export CUDNN_INCLUDE=$_s/nvidia/cudnn/include
unset _s
unset -f _cudnn_site
set +u
