#!/bin/bash
# Run a command as on a CPU without native bf16 (AVX2 only), on a CPU that has it (AMX / AVX512-BF16):
#   scripts/as_avx2_cpu.sh python -m pytest -q -n 2 --dist loadgroup
# /proc/cpuinfo is replaced, in a private mount namespace, by a copy without the bf16 and AMX flags (what
# `--precision auto` reads), oneDNN and MKL are held to AVX2 (bf16 matmuls emulated, as there) and ATen to its AVX2
# kernels. Needs root (or unprivileged user namespaces) for `unshare --mount`.
set -euo pipefail
fake=$(mktemp)
trap 'rm -f "$fake"' EXIT
sed -E 's/ (amx_[a-z0-9]+|avx512_bf16|avx512_fp16)\b//g' /proc/cpuinfo > "$fake"
unshare --mount bash -c 'mount --bind "$0" /proc/cpuinfo && export ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 && "$@"' "$fake" "$@"
