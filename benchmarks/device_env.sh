#!/usr/bin/env bash
# Source this on the GPU machine: installs the carried wheels (.whl/) and puts pgolf on the path,
# then builds the proxy dataset from carried documents and tokenizer (encoding uses all cores).
#
#   source benchmarks/device_env.sh sp1024        # -> data/proxy_sp1024 from .carry/proxy_docs + .carry/tok
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# FlashAttention-4's CUDA 13 libraries, unpacked by an earlier call on this machine (benchmarks/fa4_wheels.sh)
[ -d .fa4site/nvidia_cutlass_dsl ] && cp -a .fa4site/. /tmp/site/
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
# what nvidia-cutlass-dsl's .pth file adds in a site-packages (a --target folder on PYTHONPATH runs no .pth)
[ -d /tmp/site/nvidia_cutlass_dsl/dsl_packages ] && export PYTHONPATH="$PYTHONPATH:/tmp/site/nvidia_cutlass_dsl/dsl_packages"
export PYTHONUNBUFFERED=1
TOK="${1:-sp1024}"
if [ "$TOK" != "none" ]; then
  args=(--corpus proxy --tokenizer "$TOK" --docs-dir .carry/proxy_docs)
  [ -f ".carry/tok/proxy_${TOK}.model" ] && args+=(--tokenizer-path ".carry/tok/proxy_${TOK}.model")
  /usr/bin/time -f "data build %e s" python3 -m pgolf data build "${args[@]}"
fi
set +e
