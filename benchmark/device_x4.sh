#!/usr/bin/env bash
# One call on a 4-GPU machine: the 7B-MoT full fine-tune (device_7b.sh; args as there, default
# 32k tokens per GPU with ZeRO-3, then 8k with ZeRO-2), then the ~1.5B model's scaling at 1, 2
# and 4 GPUs (device_dist.sh part B).  Two tarballs of results under $OUT: d7 and dd.
set -uo pipefail
[ $# -gt 0 ] || set -- 32768:3 8192:2
SKIP_15=1 bash benchmark/device_7b.sh "$@"
ONLY_B=1 bash benchmark/device_dist.sh
