# Sourced by the GPU scripts: the sener binary built by tools/build-cuda.sh and carried in gpu/
# (plain or .xz), and the CUDA 13 libraries it links (cuBLAS, NVRTC, cuRAND, cudart: from the
# machine's PyTorch wheels when no toolkit folder has them).
set -u
OUT=${OUT:-/tmp/sener-gpu-out}; mkdir -p "$OUT"
S=/root/sener-cuda
if [ ! -x "$S" ]; then
  if [ -f gpu/sener.xz ]; then xz -dc gpu/sener.xz > "$S" 2>/dev/null || python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" gpu/sener.xz > "$S"; else cp gpu/sener "$S"; fi
  chmod +x "$S"
fi
libs=$(find /opt /usr/local /usr/lib -xdev \( -name 'libcublas.so.13' -o -name 'libnvrtc.so.13' -o -name 'libcurand.so.10' \
  -o -name 'libcudart.so.13' -o -name 'libcublasLt.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export RUST_BACKTRACE=0
