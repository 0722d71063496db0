/* test_attn_units.c — usbx_attn_plan_units (kernels/attn_units.h), the work plan of the Hopper
 * training attention backward: every block's query tiles covered once, in launch order, and the
 * chunks it picks for the 1.59 B trainer's layouts (H 12, 132 multiprocessors). */
#include "attn_units.h"
#include "testlib.h"

/* checks the invariants of a plan of np blocks; returns the unit count */
static int check_plan(const char *name, const int *nkb, int np, int H, int expect_chunk) {
  int *units = malloc(sizeof(int) * (5 * (size_t)np + 1)), n = -1;
  int *covered = calloc((size_t)np, sizeof(int));
  const int chunk = usbx_attn_plan_units(nkb, np, H, 132, units, &n);
  if (expect_chunk > 0) CHECKF(chunk == expect_chunk, "%s: chunk %d, expected %d", name, chunk, expect_chunk);
  CHECKF(n >= 0 && n <= 5 * np, "%s: %d units for %d blocks", name, n, np);
  int prev_size = 1 << 30, prev_kb = -1;
  for (int u = 0; u < n; u++) {
    const int kb = units[u] >> USBX_ATTN_UNIT_SHIFT, c = units[u] & ((1 << USBX_ATTN_UNIT_SHIFT) - 1);
    CHECKF(kb >= 0 && kb < np, "%s: unit %d: block %d", name, u, kb);
    if (kb < 0 || kb >= np) continue;
    const int first = c * chunk, size = nkb[kb] - first < chunk ? nkb[kb] - first : chunk;
    CHECKF(size > 0, "%s: unit %d: empty (block %d, chunk index %d)", name, u, kb, c);
    CHECKF(size < prev_size || (size == prev_size && kb >= prev_kb),
           "%s: unit %d out of launch order", name, u);
    covered[kb] += size;
    prev_size = size;
    prev_kb = kb;
  }
  for (int kb = 0; kb < np; kb++) CHECKF(covered[kb] == nkb[kb], "%s: block %d: %d of %d tiles", name, kb, covered[kb], nkb[kb]);
  free(units);
  free(covered);
  return n;
}

int main(void) {
  enum { NP = 65 };
  int nkb[NP];
  /* expert order, 8204 tokens: the captions' block and the samples' boundary twice the others */
  for (int i = 0; i < NP; i++) nkb[i] = 65;
  nkb[0] = nkb[32] = 129;
  CHECK_EQ_INT(check_plan("expert order 8204", nkb, NP, 12, 43), 132);
  /* packed order, 8204 tokens: one boundary block */
  for (int i = 0; i < NP; i++) nkb[i] = 65;
  nkb[32] = 129;
  CHECK_EQ_INT(check_plan("packed order 8204", nkb, NP, 12, 129), 65);
  /* 8192 tokens, two samples: 64 equal blocks, no split */
  for (int i = 0; i < 64; i++) nkb[i] = 64;
  CHECK_EQ_INT(check_plan("8192 equal blocks", nkb, 64, 12, 64), 64);
  /* one huge block among small ones: split into four */
  for (int i = 0; i < NP; i++) nkb[i] = i == 7 ? 400 : 9;
  check_plan("one large block", nkb, NP, 12, -1);
  /* empty blocks (keys nobody sees) get no unit; no work at all: none */
  for (int i = 0; i < NP; i++) nkb[i] = i % 3 ? 20 : 0;
  check_plan("empty blocks", nkb, NP, 4, -1);
  for (int i = 0; i < NP; i++) nkb[i] = 0;
  CHECK_EQ_INT(check_plan("no work", nkb, NP, 12, -1), 0);
  return t_done("test_attn_units");
}
