#!/usr/bin/env bash
# Builds the CUDA binary on a machine without a GPU or CUDA toolkit (for carrying to a GPU machine
# with driver ≥ 580 and the CUDA 13 runtime libraries): nvcc and the runtime from PyPI (13.0.x),
# real cudart/cublas/nvrtc from PyPI wheels, and link-time stubs of libcuda (the driver) and
# libcurand whose sonames resolve to the real libraries on the GPU machine.
# Output: target-cuda/release/sener (stripped copy: target-cuda/sener-cuda).
# SENER_CUDA_FEATURES (default `cuda`) picks the cargo features, e.g. `cuda,nccl` for data-parallel
# training over NCCL (then also a link-time stub of libnccl.so.2, and mpicc for the MPI bootstrap;
# the GPU machine needs the real libnccl.so.2 and an MPI runtime).
set -euo pipefail
features="${SENER_CUDA_FEATURES:-cuda}"
cd "$(dirname "$0")/.."
cuda=/opt/cuda13
stubs=/opt/cuda-stubs
if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install --quiet --target "$cuda" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl nvidia-cublas nvidia-cuda-nvrtc
fi
lib="$cuda/nvidia/cu13/lib"
# cuBLAS and NVRTC may also come from a Python environment's nvidia wheels (PyTorch installs them).
pylib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib"
mkdir -p "$stubs"
ln -sf "$lib/libcudart.so.13" "$stubs/libcudart.so"
for l in cublas cublasLt nvrtc; do
  real=$(ls "$lib"/lib$l.so.* "$pylib"/lib$l.so.* 2>/dev/null | head -n1 || true)
  [ -n "$real" ] || { echo "build-cuda: lib$l not found in $lib or $pylib" >&2; exit 1; }
  ln -sf "$real" "$stubs/lib$l.so"
done
# Driver and cuRAND: link-time stubs exporting every driver (cu*) and cuRAND symbol cudarc
# references (from `nm` of its rlib); at run time the real libcuda.so.1 / libcurand.so.10 load.
for so in cuda curand nccl; do [ -f "$stubs/lib$so.so" ] || gcc -shared -fPIC -o "$stubs/lib$so.so" -x c /dev/null; done
export PATH="$cuda/nvidia/cu13/bin:$PATH" CUDA_ROOT="$cuda/nvidia/cu13" CUDA_COMPUTE_CAP=90 \
  CARGO_TARGET_DIR="$PWD/target-cuda" RUSTFLAGS="-L $stubs"
if ! cargo build --release -p sener-cli --features "$features"; then
  rlib=$(ls -t target-cuda/release/deps/libcudarc-*.rlib | head -n1)
  nm -u "$rlib" | awk '{print $2}' | grep -E '^cu[A-Z]' | sort -u | sed 's/.*/void &(void){}/' > "$stubs/cuda.c"
  nm -u "$rlib" | awk '{print $2}' | grep -E '^curand' | sort -u | sed 's/.*/void &(void){}/' > "$stubs/curand.c"
  gcc -shared -fPIC -Wl,-soname,libcurand.so.10 -o "$stubs/libcurand.so" "$stubs/curand.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/cuda.c"
  nm -u "$rlib" | awk '{print $2}' | grep -E '^nccl' | sort -u | sed 's/.*/void &(void){}/' > "$stubs/nccl.c"
  gcc -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$stubs/libnccl.so" "$stubs/nccl.c"
  cargo build --release -p sener-cli --features "$features"
fi
strip -o target-cuda/sener-cuda target-cuda/release/sener
ls -la target-cuda/sener-cuda
