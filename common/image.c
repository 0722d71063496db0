/* image.c — see image.h. */
#include "image.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int roundi(double x) { return (int)lround(x); }   /* python round() differs only on exact .5 */

void usbx_transform_size(int w, int h, int max_long, int min_short, int stride, long max_pixels, int *W, int *H) {
  double scale = fmin((double)max_long / (w > h ? w : h), 1.0);
  scale = fmax(scale, (double)min_short / (w < h ? w : h));
  int nw = roundi(w * scale), nh = roundi(h * scale);
  nw = roundi((double)nw / stride) * stride; nh = roundi((double)nh / stride) * stride;
  if (nw < stride) nw = stride;
  if (nh < stride) nh = stride;
  if ((long)nw * nh > max_pixels) {
    double s = (double)max_pixels / ((double)nw * nh);
    nw = roundi(nw * s / stride) * stride; nh = roundi(nh * s / stride) * stride;
    if (nw < stride) nw = stride;
    if (nh < stride) nh = stride;
  }
  if ((nw > nh ? nw : nh) > max_long) {
    double s = (double)max_long / (nw > nh ? nw : nh);
    nw = roundi(nw * s / stride) * stride; nh = roundi(nh * s / stride) * stride;
    if (nw < stride) nw = stride;
    if (nh < stride) nh = stride;
  }
  *W = nw; *H = nh;
}

static double cubic(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/* weights of one axis: for each output index, [lo, lo+cnt) input taps and their weights */
typedef struct { int *lo, *cnt, maxk; double *w; } taps;

static taps make_taps(int in, int out) {
  taps t;
  double scale = (double)in / out, fs = scale > 1 ? scale : 1, support = 2.0 * fs;
  t.maxk = (int)ceil(support) * 2 + 1;
  t.lo = xmalloc(sizeof(int) * (size_t)out); t.cnt = xmalloc(sizeof(int) * (size_t)out);
  t.w = xcalloc((size_t)out * t.maxk, sizeof(double));
  for (int i = 0; i < out; i++) {
    double center = (i + 0.5) * scale;
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in) hi = in;
    if (hi - lo > t.maxk) hi = lo + t.maxk;
    double sum = 0;
    for (int x = lo; x < hi; x++) { double v = cubic((x - center + 0.5) / fs); t.w[(size_t)i * t.maxk + (x - lo)] = v; sum += v; }
    if (sum != 0) for (int x = 0; x < hi - lo; x++) t.w[(size_t)i * t.maxk + x] /= sum;
    t.lo[i] = lo; t.cnt[i] = hi - lo;
  }
  return t;
}
static void free_taps(taps *t) { free(t->lo); free(t->cnt); free(t->w); }

static uint8_t clamp_u8(double v) { long r = lround(v); return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r); }

void usbx_resize_bicubic(const uint8_t *src, int w, int h, int C, uint8_t *dst, int W, int H) {
  if (w == W && h == H) { memcpy(dst, src, (size_t)w * h * C); return; }
  /* horizontal pass into uint8 (as PIL does), then vertical */
  taps tx = make_taps(w, W), ty = make_taps(h, H);
  uint8_t *mid = xmalloc((size_t)W * h * C);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < W; x++)
      for (int c = 0; c < C; c++) {
        double acc = 0;
        for (int k = 0; k < tx.cnt[x]; k++) acc += tx.w[(size_t)x * tx.maxk + k] * src[((size_t)y * w + tx.lo[x] + k) * C + c];
        mid[((size_t)y * W + x) * C + c] = clamp_u8(acc);
      }
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int c = 0; c < C; c++) {
        double acc = 0;
        for (int k = 0; k < ty.cnt[y]; k++) acc += ty.w[(size_t)y * ty.maxk + k] * mid[((size_t)(ty.lo[y] + k) * W + x) * C + c];
        dst[((size_t)y * W + x) * C + c] = clamp_u8(acc);
      }
  free(mid);
  free_taps(&tx); free_taps(&ty);
}
