/* cpu_backend.c — the CPU backend: fp32 everywhere, OpenBLAS for matrix products (threads =
 * cores).  This is the reference every CUDA op is tested against. */
#include <stdint.h>
#include "ops.h"
#include "cpu_ops.h"
#include "util.h"
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *cpu_alloc(usbx_backend *be, size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64) != 0) usbx_die("out of memory (%zu bytes)", n);
  return p;
}
static void cpu_free(usbx_backend *be, void *p) { free(p); }
static void cpu_copy(usbx_backend *be, void *dst, const void *src, size_t n) { if (n) memmove(dst, src, n); }
static void cpu_memset0(usbx_backend *be, void *p, size_t n) { if (n) memset(p, 0, n); }
static void cpu_sync(usbx_backend *be) {}
static void cpu_upload_convert(usbx_backend *be, void *dst, bool to_mm, const void *src, usbx_dtype dt, size_t n) {
  if (!usbx_convert(src, dt, dst, USBX_F32, n)) usbx_die("cannot convert %s weights to F32", usbx_dtype_name(dt));
}

static size_t cpu_mem_available(usbx_backend *be) { (void)be; return SIZE_MAX; }

usbx_backend *usbx_backend_cpu(void) {
  static usbx_backend be;
  static char name[64];
  if (!be.alloc) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    openblas_set_num_threads((int)n);
    snprintf(name, sizeof name, "cpu (fp32, OpenBLAS, %ld threads)", n);
    be.dev = USBX_DEV_CPU;
    be.mm_dtype = USBX_F32;
    be.name = name;
    be.alloc = cpu_alloc; be.free = cpu_free;
    be.upload = cpu_copy; be.download = cpu_copy; be.copy = cpu_copy;
    be.memset0 = cpu_memset0; be.sync = cpu_sync; be.mem_available = cpu_mem_available; be.upload_convert = cpu_upload_convert;
    be.matmul = usbx_cpu_matmul; be.matmul_res = usbx_cpu_matmul_res; be.embed = usbx_cpu_embed; be.rmsnorm = usbx_cpu_rmsnorm;
    be.layernorm = usbx_cpu_layernorm; be.qk_norm_rope = usbx_cpu_qk_norm_rope; be.to_mm = usbx_cpu_to_mm;
    be.silu_mul = usbx_cpu_silu_mul; be.silu_mul_mm = usbx_cpu_silu_mul_mm; be.matmul_mm = usbx_cpu_matmul_mm; be.gelu_tanh = usbx_cpu_gelu_tanh; be.add = usbx_cpu_add;
    be.scatter_rows = usbx_cpu_scatter_rows; be.gather_rows = usbx_cpu_gather_rows;
    be.attention = usbx_cpu_attention; be.argmax = usbx_cpu_argmax;
    be.add_row = usbx_cpu_add_row; be.silu = usbx_cpu_silu; be.cfg_euler = usbx_cpu_cfg_euler;
    be.adamw = usbx_cpu_adamw; be.sumsq_acc = usbx_cpu_sumsq_acc;
    be.sumsq_multi = usbx_cpu_sumsq_multi; be.sum_acc = usbx_cpu_sum_acc; be.mse_grad = usbx_cpu_mse_grad;
    be.im2col = usbx_cpu_im2col; be.group_norm = usbx_cpu_group_norm; be.upsample2x = usbx_cpu_upsample2x;
    be.matmul_bwd = usbx_cpu_matmul_bwd; be.rmsnorm_bwd = usbx_cpu_rmsnorm_bwd; be.layernorm_bwd = usbx_cpu_layernorm_bwd;
    be.qk_norm_rope_bwd = usbx_cpu_qk_norm_rope_bwd; be.silu_mul_bwd = usbx_cpu_silu_mul_bwd;
    be.silu_mul_bwd_mm = usbx_cpu_silu_mul_bwd_mm; be.matmul_dx_mm = usbx_cpu_matmul_dx_mm;
    be.gelu_tanh_bwd = usbx_cpu_gelu_tanh_bwd; be.silu_bwd = usbx_cpu_silu_bwd; be.embed_bwd = usbx_cpu_embed_bwd;
    be.attention_masked = usbx_cpu_attention_masked; be.attention_masked_bwd = usbx_cpu_attention_masked_bwd;
    be.cross_entropy = usbx_cpu_cross_entropy;
    be.matmul_f32 = usbx_cpu_matmul_f32; be.im2col_f32 = usbx_cpu_im2col_f32; be.attention_f32 = usbx_cpu_attention_f32;
  }
  return &be;
}

void usbx_backend_close(usbx_backend *be) {
  /* The CPU backend is a static table; the CUDA backend frees its handle and stream. */
  if (be && be->destroy) be->destroy(be);
}
