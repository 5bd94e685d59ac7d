#!/usr/bin/env bash
# FlashAttention-4 (model.attn_backend=fa4) for the GPU machine, which cannot install from a registry: downloads the
# wheels for its Python 3.12 / CUDA 13 image here, and packs the one too large to carry with the rest.
#
#   bash benchmarks/fa4_wheels.sh              # -> .whl/ (small wheels, ~10 MB) and .fa4/cu13.tar.xz (~64 MB, ~5 min)
#
# The carried tree is limited to 64 MiB, so FA4 takes two calls on one warm machine (idle release: 30 s):
#   1. carry [".fa4"], command:  bash benchmarks/fa4_wheels.sh unpack       (-> .fa4site/, kept while warm)
#   2. carry [".whl", ".carry", ...] as usual: device_env.sh installs .whl/ and merges .fa4site/ into it
# FA4 needs flash-attn-4, nvidia-cutlass-dsl (meta, libs-core, libs-base, libs-cu13), quack-kernels,
# apache-tvm-ffi, torch-c-dlpack-ext; the image already has cuda-bindings, einops, protobuf, typing-extensions.
set -euo pipefail
if [ "${1:-}" = unpack ]; then
  rm -rf .fa4site.tmp && mkdir -p .fa4site.tmp && tar -xJf .fa4/cu13.tar.xz -C .fa4site.tmp
  rm -rf .fa4site && mv .fa4site.tmp .fa4site && du -sh .fa4site
  exit 0
fi
CUTLASS=4.8.1
PLAT=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform any --no-deps)
mkdir -p .whl .fa4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q "${PLAT[@]}" -d .whl flash-attn-4==4.0.0b36 "nvidia-cutlass-dsl==$CUTLASS" \
    "nvidia-cutlass-dsl-libs-core==$CUTLASS" "nvidia-cutlass-dsl-libs-base==$CUTLASS" quack-kernels==0.6.5 \
    apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
python3 -m pip download -q "${PLAT[@]}" -d "$tmp" "nvidia-cutlass-dsl-libs-cu13==$CUTLASS"
mkdir "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl .)
tar -C "$tmp/x" -cf - . | xz -9e -T0 > .fa4/cu13.tar.xz.tmp
mv .fa4/cu13.tar.xz.tmp .fa4/cu13.tar.xz
ls -la .whl .fa4
