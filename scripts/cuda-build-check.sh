#!/usr/bin/env bash
# Compile encdec with `--features cuda` on a machine without a GPU or a CUDA install, so
# the CUDA build can't rot unnoticed. Not part of .ci/run: the first run downloads
# ~700 MB of wheels and compiles candle's CUDA kernels (tens of minutes on 2 cores).
#
#   scripts/cuda-build-check.sh              # toolkit from PyPI into target/cuda/venv
#   CUDA_HOME=/usr/local/cuda scripts/cuda-build-check.sh   # use an installed toolkit
#
# What it does:
#   1. Unless CUDA_HOME points at a toolkit with bin/nvcc, installs nvcc, cicc (nvvm), the
#      headers (cudart, crt, cccl) and the libraries the binary links against (nvrtc,
#      curand, cublas/cublasLt) from PyPI into a throw-away venv. Only the 13.x
#      `nvidia-cuda-nvcc` wheel ships nvcc itself (the -cu12/-cu11 ones only ptxas).
#   2. Adds what the wheels lack: unversioned lib*.so links for the linker, and a stub
#      libcuda.so (the driver library, which comes with the GPU driver, not the toolkit;
#      NVIDIA's toolkits ship the same kind of stub in lib/stubs).
#   3. Builds `cargo build --release --locked --features cuda` into target/cuda (its own
#      target dir, so the normal CPU build stays warm), kernels for CUDA_COMPUTE_CAP.
#   4. Checks the binary links libcuda/cublas and runs `encdec --version` against the stub.
#
# Environment: CUDA_COMPUTE_CAP (default 90 = H100/H200), CUDA_TOOLKIT_VERSION (PyPI
# `cuda-toolkit` version spec, default 13.4.*), CARGO_BUILD_JOBS, CUDA_CHECK_DIR
# (default target/cuda).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

check_dir=${CUDA_CHECK_DIR:-$repo/target/cuda}
toolkit_version=${CUDA_TOOLKIT_VERSION:-13.4.*}
if [[ -z ${CUDA_COMPUTE_CAP:-} ]] && command -v nvidia-smi >/dev/null; then
    # On a GPU machine: the first GPU's architecture (9.0 -> 90).
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
fi
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# The newest toolkit the locked cudarc knows (its cuda-130x0 features); a newer nvcc
# makes cudarc's `cuda-version-from-build-system` panic, so it is told this one instead
# (the driver API is stable within a major version).
cudarc_newest=13.4

log() { printf '[cuda-build-check] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null || die "a C compiler (cc) is needed: nvcc's host compiler and the libcuda stub"

if [[ -n ${CUDA_HOME:-} && -x ${CUDA_HOME}/bin/nvcc ]]; then
    cuda_root=$CUDA_HOME
    log "using the installed toolkit at $cuda_root"
else
    venv=$check_dir/venv
    if [[ ! -x $venv/bin/python ]]; then
        python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    # nvcc pulls crt and nvvm (cicc); cudart/cccl are headers, nvrtc/curand/cublas are
    # what candle links (cudarc's dynamic-linking feature).
    spec="cuda-toolkit[nvcc,cccl,crt,cudart,nvrtc,cublas,curand]==${toolkit_version}"
    log "pip install $spec"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec" \
        || die "pip install $spec failed"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cuda_root=$(ls -d "$site"/nvidia/cu1[0-9] 2>/dev/null | sort -V | tail -n 1)
    [[ -n $cuda_root && -x $cuda_root/bin/nvcc ]] \
        || die "no bin/nvcc under $site/nvidia/cu*: the wheel layout changed"

    # The wheels ship only versioned sonames (libcublas.so.13); -lcublas needs libcublas.so.
    for lib in "$cuda_root"/lib/lib*.so.*; do
        base=${lib##*/}
        link=$cuda_root/lib/${base%%.so.*}.so
        [[ -e $link ]] || ln -s "$base" "$link"
    done
fi

# libcuda: the real one comes with the driver (loaded at run time by its soname,
# libcuda.so.1). Link against a stub exporting every driver-API symbol cudarc declares
# (each returns CUDA_ERROR_UNKNOWN), as NVIDIA's toolkits do with lib64/stubs.
if [[ ! -e $cuda_root/lib/stubs/libcuda.so && ! -e $cuda_root/lib64/stubs/libcuda.so ]]; then
    cudarc_src=$(cargo metadata --format-version 1 --locked --features cuda 2>/dev/null \
        | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])') \
        || die "cudarc not found in cargo metadata (run cargo fetch)"
    mkdir -p "$cuda_root/lib/stubs"
    stub_c=$cuda_root/lib/stubs/libcuda_stub.c
    grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src"/src/driver/sys/*.rs \
        | sed 's/^pub unsafe fn //' | sort -u \
        | awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$stub_c"
    [[ -s $stub_c ]] || die "no driver symbols found in $cudarc_src/src/driver/sys"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_root/lib/stubs/libcuda.so" "$stub_c"
    ln -sf libcuda.so "$cuda_root/lib/stubs/libcuda.so.1"
    log "stub libcuda.so: $(wc -l <"$stub_c") symbols"
fi

export CUDA_HOME=$cuda_root CUDA_PATH=$cuda_root
export PATH=$cuda_root/bin:$PATH
export LIBRARY_PATH=$cuda_root/lib:$cuda_root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CARGO_TARGET_DIR=$check_dir

nvcc_release=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
[[ -n $nvcc_release ]] || die "could not read nvcc's release from: $(nvcc --version)"
log "nvcc $nvcc_release, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
if [[ -z ${CUDARC_CUDA_VERSION:-} ]] \
    && [[ $(printf '%s\n' "$nvcc_release" "$cudarc_newest" | sort -V | tail -n 1) != "$cudarc_newest" ]]; then
    export CUDARC_CUDA_VERSION=${cudarc_newest%.*}0${cudarc_newest#*.}0
    log "nvcc $nvcc_release is newer than cudarc knows: CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
fi

start=$(date +%s)
cargo build --release --locked --features cuda --bin encdec
log "cargo build --features cuda: $(($(date +%s) - start)) s"

bin=$CARGO_TARGET_DIR/release/encdec
[[ -x $bin ]] || die "$bin was not built"
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
log "NEEDED: $needed"
for lib in libcuda.so.1 libcublas.so libcurand.so libcudart.so; do
    [[ $needed == *"$lib"* ]] || die "$bin does not link $lib: the cuda feature did not take"
done
# What running the binary needs (scripts/gpu-check.sh sources it): the toolkit's
# libraries; libcuda.so.1 from the driver, or the stub where there is none.
stub_path=
ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' || stub_path=:$cuda_root/lib/stubs
printf 'export CUDA_HOME=%q\nexport LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' \
    "$cuda_root" "$cuda_root/lib$stub_path" >"$CARGO_TARGET_DIR/cuda-env.sh"
LD_LIBRARY_PATH=$cuda_root/lib$stub_path "$bin" --version \
    || die "$bin --version failed"
log "OK: $bin (its libraries: source $CARGO_TARGET_DIR/cuda-env.sh)"
