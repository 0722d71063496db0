#!/usr/bin/env bash
# Final-tree checks on one GPU: test_ops_cuda, the CUDA fixture check, the ~1.5B training step
# (the cuBLAS training attention, as before the flash kernels existed: USBX_CUDA_ATTN_MASKED_FLASH=0;
# its row kernels, then the warp-per-row ones, USBX_CUDA_ATTN_MASKED_ROW=0), Nsight Compute's
# per-kernel times of one step, and the PyTorch baseline in the same call.  QUICK=1: only test_ops_cuda, the fixtures and the default step
# (with and without the profile).  Now device_flash.sh with the row option as the A/B variable.
full=1; [ "${QUICK:-0}" = 1 ] && full=0
USBX_CUDA_ATTN_MASKED_FLASH=0 AB=USBX_CUDA_ATTN_MASKED_ROW TAG=row TORCH=${TORCH:-$full} NCU=${NCU:-$full} exec bash "$(dirname "$0")/device_flash.sh"
