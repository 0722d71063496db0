/* attn_units.c — usbx_attn_plan_units (attn_units.h).  A key block whose keys two samples share
 * has twice the partners of the others, and such blocks whole made a last, partial wave that ran
 * alone (the trainer's expert order at 8204 tokens: 24 of 780 blocks; span 1,293 us against 1,083
 * us of work per multiprocessor, H100, 2026-11-27): split into units, the work packs evenly. */
#include "attn_units.h"
#include "util.h"
#include <limits.h>
#include <stdlib.h>

typedef struct { int size, kb, i; } unit;

/* by falling size, then key block, then index: the launch order */
static int unit_cmp(const void *a, const void *b) {
  const unit *x = a, *y = b;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  if (x->kb != y->kb) return x->kb < y->kb ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}

/* the units of chunk c into us; returns their count */
static int split(unit *us, const int *nkb, int np, int c) {
  int m = 0;
  for (int kb = 0; kb < np; kb++)
    for (int i = 0; i * c < nkb[kb]; i++) us[m++] = (unit){nkb[kb] - i * c < c ? nkb[kb] - i * c : c, kb, i};
  qsort(us, (size_t)m, sizeof *us, unit_cmp);
  return m;
}

/* the span of m units (sorted) of H blocks each on sms multiprocessors: each block to the one that
 * is free first (a min-heap of their finish times) */
static long span(const unit *us, int m, int H, long *load, int sms) {
  for (int s = 0; s < sms; s++) load[s] = 0;
  for (int u = 0; u < m; u++)
    for (int h = 0; h < H; h++) {
      long v = load[0] + us[u].size + USBX_ATTN_UNIT_COST;
      int at = 0;
      for (;;) {   /* sift the root's new value down */
        int l = 2 * at + 1, r = l + 1, min = at;
        long mv = v;
        if (l < sms && load[l] < mv) min = l, mv = load[l];
        if (r < sms && load[r] < mv) min = r;
        if (min == at) break;
        load[at] = load[min];
        at = min;
      }
      load[at] = v;
    }
  long t = 0;
  for (int s = 0; s < sms; s++) t = load[s] > t ? load[s] : t;
  return t;
}

int usbx_attn_plan_units(const int *nkb, int np, int H, int sms, int *units, int *n_units) {
  int max_n = 0;
  for (int kb = 0; kb < np; kb++) max_n = nkb[kb] > max_n ? nkb[kb] : max_n;
  *n_units = 0;
  if (!max_n) return 1;
  if (H < 1) H = 1;
  if (sms < 1) sms = 1;
  unit *us = xmalloc(sizeof *us * (5 * (size_t)np + 1));
  long *load = xmalloc(sizeof *load * (size_t)sms);
  int best = max_n;
  long best_t = LONG_MAX;
  for (int k = 1; k <= 4; k++) {   /* chunks of max / k (beyond 4 the units' own costs grow) */
    const int c = (max_n + k - 1) / k;
    const long t = span(us, split(us, nkb, np, c), H, load, sms);
    if (t < best_t) best_t = t, best = c;
  }
  const int m = split(us, nkb, np, best);
  for (int u = 0; u < m; u++) units[u] = us[u].kb << USBX_ATTN_UNIT_SHIFT | us[u].i;
  *n_units = m;
  free(us);
  free(load);
  return best;
}
