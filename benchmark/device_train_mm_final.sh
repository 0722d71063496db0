#!/usr/bin/env bash
# On a 2-GPU machine: the single-GPU checks and A/B of device_mlp_mm.sh on GPU 0, then
# data-parallel equality (2 GPUs against 1 GPU with --accum 2) and 1.59 B scaling at 1 and 2 GPUs
# (device_dist.sh, ONLY_AB=1).  Two tarballs under $OUT.
set -uo pipefail
bash benchmark/device_mlp_mm.sh
ONLY_AB=1 bash benchmark/device_dist.sh
