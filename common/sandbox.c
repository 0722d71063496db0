/* sandbox.c — the offline judge for sandbox-world renders (see sandbox.h and render.c for the
 * icon vocabulary it reads back). */
#include "sandbox.h"
#include "render.h"
#include "synth.h"
#include "png.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int cdist(const uint8_t *a, const uint8_t *b) {
  int d = 0;
  for (int c = 0; c < 3; c++) { int t = abs((int)a[c] - (int)b[c]); if (t > d) d = t; }
  return d;
}
static int cdist2(const uint8_t *a, const uint8_t *b) {
  int d = 0;
  for (int c = 0; c < 3; c++) { int t = (int)a[c] - (int)b[c]; d += t * t; }
  return d;
}
static int cmp_u8(const void *a, const void *b) { return (int)*(const uint8_t *)a - (int)*(const uint8_t *)b; }
static int cmp_int(const void *a, const void *b) { int x = *(const int *)a, y = *(const int *)b; return (x > y) - (x < y); }

/* median colour of a pixel list */
static void median_rgb(const uint8_t *rgb, const int *idx, int n, uint8_t out[3]) {
  uint8_t *tmp = xmalloc((size_t)(n ? n : 1));
  for (int c = 0; c < 3; c++) {
    for (int i = 0; i < n; i++) tmp[i] = rgb[(size_t)idx[i] * 3 + c];
    qsort(tmp, (size_t)n, 1, cmp_u8);
    out[c] = n ? tmp[n / 2] : 0;
  }
  free(tmp);
}

static void border_bg(const uint8_t *rgb, int w, int h, uint8_t bg[3]) {
  int n = 2 * w + 2 * h;
  int *idx = xmalloc((size_t)n * sizeof(int));
  int k = 0;
  for (int x = 0; x < w; x++) { idx[k++] = x; idx[k++] = (h - 1) * w + x; }
  for (int y = 0; y < h; y++) { idx[k++] = y * w; idx[k++] = y * w + w - 1; }
  median_rgb(rgb, idx, k, bg);
  free(idx);
}

static int is_dark(const uint8_t *p) { return p[0] < 80 && p[1] < 80 && p[2] < 80; }

/* one connected component's features -> class (or -1) */
static int classify(const uint8_t *rgb, int w, int h, const int *lab, int id, const int *pix, int n,
                    int bx0, int by0, int bx1, int by1, char *why, size_t whylen) {
  int bw = bx1 - bx0 + 1, bh = by1 - by0 + 1;
  double aspect = (double)bw / bh, fill = (double)n / ((double)bw * bh);
  int shape;
  if (aspect > 1.5) shape = USBX_SHAPE_WIDE;
  else if (aspect < 1 / 1.5) shape = USBX_SHAPE_TALL;
  else {
    /* triangles: most of the area in one half (about 1:3); circle and square are symmetric */
    double midy = (by0 + by1) / 2.0;
    int top = 0, bot = 0;
    for (int i = 0; i < n; i++) { int y = pix[i] / w; if (y < midy) top++; else if (y > midy) bot++; }
    if (top * 10 < bot * 6) shape = USBX_SHAPE_TRI_UP;
    else if (bot * 10 < top * 6) shape = USBX_SHAPE_TRI_DOWN;
    else {
      /* square or circle: the bounding box's corners are filled for a square, empty for a circle */
      int in = 0, tot = 0;
      for (int cyi = 0; cyi < 2; cyi++)
        for (int cxi = 0; cxi < 2; cxi++)
          for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) {
              int x = cxi ? bx1 - dx : bx0 + dx, y = cyi ? by1 - dy : by0 + dy;
              tot++;
              if (lab[y * w + x] == id) in++;
            }
      double corner = (double)in / tot;
      if (fill > 0.7 && corner > 0.1) shape = USBX_SHAPE_SQUARE;          /* blur rounds a square's corners a little */
      else if (fill > 0.6 && fill < 0.9 && corner <= 0.1) shape = USBX_SHAPE_CIRCLE;
      else {
        snprintf(why, whylen, "unknown shape (fill %.2f, corners %.2f)", fill, corner);
        return -1;
      }
    }
  }
  /* colour: pure pixels only.  Blur mixes the colour with the background at the edges and with
   * the dark pattern inside, so take the pixels at least 2 px inside the object (1 px, or all,
   * for tiny objects), and of those the brighter half (the dark pattern and its blends are darker
   * than the colour); their median, then the nearest palette colour */
  int *cand = xmalloc((size_t)n * sizeof(int));
  int ncand = 0;
  for (int depth = 2; depth >= 0 && ncand < 4; depth--) {
    ncand = 0;
    for (int i = 0; i < n; i++) {
      int p = pix[i], x = p % w, y = p / w, in = 1;
      for (int dy = -depth; dy <= depth && in; dy++)
        for (int dx = -depth; dx <= depth; dx++) {
          int xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= w || yy >= h || lab[yy * w + xx] != id) { in = 0; break; }
        }
      if (in && !is_dark(rgb + (size_t)p * 3)) cand[ncand++] = p;
    }
  }
  int *lums = xmalloc((size_t)(ncand ? ncand : 1) * sizeof(int));
  for (int i = 0; i < ncand; i++) {
    const uint8_t *c = rgb + (size_t)cand[i] * 3;
    lums[i] = (299 * c[0] + 587 * c[1] + 114 * c[2]) / 1000;
  }
  int *sl = xmalloc((size_t)(ncand ? ncand : 1) * sizeof(int));
  memcpy(sl, lums, (size_t)ncand * sizeof(int));
  qsort(sl, (size_t)ncand, sizeof(int), cmp_int);
  int lcut = ncand ? sl[ncand / 2] : 0;
  free(sl);
  int nsel = 0;
  for (int i = 0; i < ncand; i++) if (lums[i] >= lcut) cand[nsel++] = cand[i];
  free(lums);
  if (nsel == 0) { free(cand); snprintf(why, whylen, "no colour"); return -1; }
  uint8_t med[3];
  median_rgb(rgb, cand, nsel, med);
  free(cand);
  int best = -1, bd = 1 << 30;
  for (int k = 0; k < USBX_NCOLOURS; k++) {
    int d = cdist2(med, usbx_palette[k]);
    if (d < bd) { bd = d; best = k; }
  }
  if (bd > 55 * 55) {
    snprintf(why, whylen, "unknown colour (%d,%d,%d)", med[0], med[1], med[2]);
    return -1;
  }
  /* pattern: pixels well below the colour's brightness are dark (a blurred dot still counts);
   * their share, and where their centre lies (blur shrinks a region symmetrically, so its centre
   * stays put): the middle (dot) or an end (cap) */
  const uint8_t *pc = usbx_palette[best];
  int lthr = (299 * pc[0] + 587 * pc[1] + 114 * pc[2]) * 6 / 10000;
  int nd = 0;
  double dsum_y = 0;
  for (int i = 0; i < n; i++) {
    const uint8_t *c = rgb + (size_t)pix[i] * 3;
    int l = (299 * c[0] + 587 * c[1] + 114 * c[2]) / 1000;
    if (l < lthr || is_dark(c)) { nd++; dsum_y += pix[i] / w; }
  }
  int pattern;
  double dfrac = (double)nd / n;
  if (dfrac < 0.015) pattern = USBX_PAT_SOLID;
  else {
    double off = (dsum_y / nd - (by0 + by1) / 2.0) / bh;
    pattern = fabs(off) > 0.15 ? USBX_PAT_CAP : USBX_PAT_DOT;
    if (dfrac > 0.6) { snprintf(why, whylen, "mostly dark object"); return -1; }
  }
  int obj = usbx_icon_object(shape, best, pattern);
  if (obj < 0)
    snprintf(why, whylen, "no object is a %s %s %s", usbx_colour_names[best], usbx_pattern_names[pattern], usbx_shape_names[shape]);
  return obj;
}

static void read_portrait(const uint8_t *rgb, int w, int h, usbx_scene_reading *out) {
  out->kind = 2;
  out->skin = out->hair = out->age = out->gender = -1;
  int S = w < h ? w : h;
  /* skin: nearest of three, within a tolerance */
  long cnt[3] = {0, 0, 0};
  double sx[3] = {0}, sy[3] = {0};
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
      int best = -1, bd = 1 << 30;
      for (int k = 0; k < 3; k++) { int d = cdist2(p, usbx_skin_rgb[k]); if (d < bd) { bd = d; best = k; } }
      if (bd <= 30 * 30) { cnt[best]++; sx[best] += x; sy[best] += y; }
    }
  int sk = 0;
  for (int k = 1; k < 3; k++) if (cnt[k] > cnt[sk]) sk = k;
  if (cnt[sk] < (long)(0.03 * S * S)) { out->kind = -1; snprintf(out->why, sizeof out->why, "no face found"); return; }
  out->skin = sk;
  double cx = sx[sk] / cnt[sk], cy = sy[sk] / cnt[sk];
  double rad = sqrt((double)cnt[sk] / M_PI);
  {
    /* the face: the skin component around the centroid with its holes (eyes, mouth, lines)
     * filled; blended hair or background edges that look like skin are not connected to it */
    size_t np = (size_t)w * h;
    unsigned char *m = xcalloc(np, 1);   /* 1 skin, 2 face component, 3 outside */
    for (size_t i = 0; i < np; i++) m[i] = cdist2(rgb + i * 3, usbx_skin_rgb[sk]) <= 35 * 35;
    int *st = xmalloc(np * sizeof(int));
    int seed = -1;
    double bd = 1e18;
    for (int y = (int)(cy - rad); y <= (int)(cy + rad); y++)
      for (int x = (int)(cx - rad); x <= (int)(cx + rad); x++) {
        if (x < 0 || y < 0 || x >= w || y >= h || m[(size_t)y * w + x] != 1) continue;
        double d = (x - cx) * (x - cx) + (y - cy) * (y - cy);
        if (d < bd) { bd = d; seed = y * w + x; }
      }
    if (seed >= 0) {
      int sp = 0;
      st[sp++] = seed;
      m[seed] = 2;
      while (sp) {
        int p = st[--sp], x = p % w, y = p / w;
        int nb[4] = {x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1};
        for (int k = 0; k < 4; k++) if (nb[k] >= 0 && m[nb[k]] == 1) { m[nb[k]] = 2; st[sp++] = nb[k]; }
      }
      /* everything reachable from the border without crossing the face is outside */
      sp = 0;
      for (int x = 0; x < w; x++) for (int e = 0; e < 2; e++) {
        int p = e ? (h - 1) * w + x : x;
        if (m[p] != 2 && m[p] != 3) { m[p] = 3; st[sp++] = p; }
      }
      for (int y = 0; y < h; y++) for (int e = 0; e < 2; e++) {
        int p = y * w + (e ? w - 1 : 0);
        if (m[p] != 2 && m[p] != 3) { m[p] = 3; st[sp++] = p; }
      }
      while (sp) {
        int p = st[--sp], x = p % w, y = p / w;
        int nb[4] = {x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1};
        for (int k = 0; k < 4; k++) if (nb[k] >= 0 && m[nb[k]] != 2 && m[nb[k]] != 3) { m[nb[k]] = 3; st[sp++] = nb[k]; }
      }
      double sxx = 0, syy = 0;
      long c = 0;
      for (size_t i = 0; i < np; i++)
        if (m[i] != 3) { c++; sxx += (double)(i % (size_t)w); syy += (double)(i / (size_t)w); }
      if (c > 10) { cx = sxx / c; cy = syy / c; rad = sqrt((double)c / M_PI) + 0.25; }
    }
    free(m);
    free(st);
  }
  out->age = rad < 0.225 * S ? 0 : 1;
  /* hair: the cap above the face.  Scan the rows above the centre column; rows that are neither
   * skin nor background are hair; drop the first and last of them (blended edges). */
  int idx[4096], n = 0;
  int rows[64], nrows = 0;
  /* bottom up from between the eyes and the forehead lines to the background above the head:
   * every row that is neither skin nor background is a candidate (forehead lines, blended
   * edges, hair) and the purest match to a hair colour decides */
  for (int y = (int)lround(cy - 0.3 * rad); y >= 0 && y >= (int)(cy - 2.2 * rad) && nrows < 64; y--) {
    int tmp[512], m = 0;
    for (int x = (int)(cx - 0.3 * rad); x <= (int)(cx + 0.3 * rad) && m < 512; x++)
      if (x >= 0 && x < w && y < h) tmp[m++] = y * w + x;
    if (!m) continue;
    uint8_t med[3];
    median_rgb(rgb, tmp, m, med);
    if (cdist2(med, usbx_bg_portrait) <= 30 * 30) break;
    if (cdist2(med, usbx_skin_rgb[sk]) <= 30 * 30) continue;
    rows[nrows++] = y;
  }
  /* the purest hair row decides (blended rows at the cap's edges are farther from every colour) */
  int best_d = 1 << 30;
  for (int i = 0; i < nrows; i++) {
    n = 0;
    for (int x = (int)(cx - 0.3 * rad); x <= (int)(cx + 0.3 * rad); x++)
      if (x >= 0 && x < w && n < 4096) idx[n++] = rows[i] * w + x;
    if (!n) continue;
    uint8_t med[3];
    median_rgb(rgb, idx, n, med);
    for (int k = 0; k < usbx_nhair; k++) {
      int d = cdist2(med, usbx_hair_rgb[k]);
      if (d < best_d) { best_d = d; out->hair = k; }
    }
  }
  if (best_d > 40 * 40) out->hair = -1;
  const uint8_t *hm = out->hair >= 0 ? usbx_hair_rgb[out->hair] : usbx_bg_portrait;
  /* gender: long hair beside the face */
  int side_hair = 0;
  for (int s = -1; s <= 1; s += 2) {
    n = 0;
    int x0 = (int)lround(cx + s * 1.3 * rad);
    for (int y = (int)(cy + 0.3 * rad); y <= (int)(cy + 0.5 * rad); y++)
      for (int x = x0 - 1; x <= x0 + 1; x++)
        if (x >= 0 && y >= 0 && x < w && y < h && n < 4096) idx[n++] = y * w + x;
    if (!n) continue;
    uint8_t m[3];
    median_rgb(rgb, idx, n, m);
    if (out->hair >= 0 && cdist2(m, usbx_bg_portrait) > cdist2(m, hm) && cdist(m, usbx_bg_portrait) > 15) side_hair++;
  }
  out->gender = side_hair == 2 ? 0 : side_hair == 0 ? 1 : -1;
  /* age lines on the forehead of adults */
  if (out->age == 1) {
    double skin_l = 0.299 * usbx_skin_rgb[sk][0] + 0.587 * usbx_skin_rgb[sk][1] + 0.114 * usbx_skin_rgb[sk][2];
    double minrow = 1e9;
    for (int y = (int)(cy - 0.8 * rad); y <= (int)(cy - 0.28 * rad); y++) {
      double sum = 0;
      int c = 0;
      for (int x = (int)(cx - 0.3 * rad); x <= (int)(cx + 0.3 * rad); x++) {
        if (x < 0 || y < 0 || x >= w || y >= h) continue;
        const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
        sum += 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        c++;
      }
      if (c && sum / c < minrow) minrow = sum / c;
    }
    if (minrow < 0.82 * skin_l) out->age = 2;
  }
}

void usbx_sandbox_read(const uint8_t *rgb, int w, int h, usbx_scene_reading *out) {
  memset(out, 0, sizeof *out);
  out->skin = out->hair = out->age = out->gender = -1;
  uint8_t bg[3];
  border_bg(rgb, w, h, bg);
  if (cdist(bg, usbx_bg_portrait) <= 20) { read_portrait(rgb, w, h, out); return; }
  if (cdist(bg, usbx_bg_scene) > 40) { out->kind = -1; snprintf(out->why, sizeof out->why, "unknown background (%d,%d,%d)", bg[0], bg[1], bg[2]); return; }
  size_t np = (size_t)w * h;
  unsigned char *mask = xcalloc(np, 1);
  int *lab = xmalloc(np * sizeof(int));
  for (size_t i = 0; i < np; i++) { mask[i] = cdist(rgb + i * 3, bg) > 60; lab[i] = -1; }
  /* border pixels are never interior: clear a 1-px frame from the interior test by bounds */
  int *stack = xmalloc(np * sizeof(int)), *pix = xmalloc(np * sizeof(int));
  int minarea = (int)(0.0015 * (double)np);
  if (minarea < 6) minarea = 6;
  int id = 0;
  out->kind = 0;
  for (size_t s = 0; s < np; s++) {
    if (!mask[s] || lab[s] >= 0) continue;
    int sp = 0, n = 0, touches = 0;
    int bx0 = w, by0 = h, bx1 = -1, by1 = -1;
    stack[sp++] = (int)s;
    lab[s] = id;
    while (sp) {
      int p = stack[--sp];
      pix[n++] = p;
      int x = p % w, y = p / w;
      if (x < bx0) bx0 = x;
      if (x > bx1) bx1 = x;
      if (y < by0) by0 = y;
      if (y > by1) by1 = y;
      if ((x == 0 || y == 0 || x == w - 1 || y == h - 1) && cdist(rgb + (size_t)p * 3, bg) > 120) touches = 1;   /* solid, not a blurred halo */
      for (int dy = -1; dy <= 1; dy++)
        for (int dx = -1; dx <= 1; dx++) {
          int xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
          int q = yy * w + xx;
          if (mask[q] && lab[q] < 0) { lab[q] = id; stack[sp++] = q; }
        }
    }
    if (n < minarea) { id++; continue; }   /* specks */
    if (out->n >= 16) { out->kind = -1; snprintf(out->why, sizeof out->why, "more than 16 objects"); break; }
    int cls;
    char why[160] = "";
    if (touches) { cls = -1; snprintf(why, sizeof why, "object cut by the image border"); }
    else cls = classify(rgb, w, h, lab, id, pix, n, bx0, by0, bx1, by1, why, sizeof why);
    if (cls < 0 && !out->why[0]) snprintf(out->why, sizeof out->why, "object %d: %s", out->n + 1, why);
    out->obj[out->n++] = cls;
    out->kind = 1;
    id++;
  }
  free(mask); free(lab); free(stack); free(pix);
}

/* one class for all objects, or -1 */
static int single_class(const usbx_scene_reading *r) {
  if (r->kind != 1 || r->n == 0) return -1;
  for (int i = 0; i < r->n; i++) if (r->obj[i] < 0 || r->obj[i] != r->obj[0]) return -1;
  return r->obj[0];
}

char *usbx_sandbox_caption(const char *task, const usbx_scene_reading *r) {
  if (task && !strcmp(task, "knowledge")) {
    if (r->kind == 2) {
      const char *age = r->age < 0 ? "unclear" : usbx_age_names[r->age];
      return xasprintf("Person: %s; %s; %s; %s", r->skin < 0 ? "unclear" : usbx_skin_names[r->skin],
                       r->hair < 0 ? "unclear" : usbx_hair_names[r->hair], age,
                       r->gender < 0 ? "unclear" : r->gender ? "male" : "female");
    }
    int c = single_class(r);
    if (c < 0) return xstrdup("Reject");
    if (usbx_objects[c].kind == USBX_OBJ_FRUIT) return xasprintf("Fruit: %s", usbx_objects[c].sing);
    if (usbx_objects[c].kind == USBX_OBJ_FLOWER) return xasprintf("Flower: %s", usbx_objects[c].sing);
    return xstrdup("Reject");
  }
  int c = single_class(r);
  if (task && !strcmp(task, "mapping")) {
    if (c < 0) return xstrdup("Object: Error");
    return xasprintf("Object: %s", usbx_objects[c].sing);
  }
  if (c < 0) return xstrdup("Error");
  return usbx_count_phrase(r->n, c);
}

static const char *after_prefix(const char *s, const char *prefix) {
  size_t n = strlen(prefix);
  if (strncasecmp(s, prefix, n)) return NULL;
  s += n;
  while (*s == ' ') s++;
  return s;
}

int usbx_sandbox_score(const char *task, const char *caption, const char *expected) {
  if (!caption || !expected) return 0;
  if (task && !strcmp(task, "knowledge")) {
    if (!strcmp(caption, "Reject")) return 0;
    const char *v;
    if ((v = after_prefix(caption, "Person:"))) {
      int skin, hair, age, gender;
      if (usbx_parse_person(expected, &skin, &hair, &age, &gender)) return 0;
      char buf[256];
      snprintf(buf, sizeof buf, "%s", v);
      char *slot[4] = {0};
      int k = 0;
      char *save = NULL;
      for (char *t = strtok_r(buf, ";", &save); t && k < 4; t = strtok_r(NULL, ";", &save)) slot[k++] = usbx_norm_word(t);
      if (k != 4) return 0;
      int cs = -1, ch = -1, ca = -1, cg = -1;
      for (int i = 0; i < 3; i++) if (!strcasecmp(slot[0], usbx_skin_names[i])) cs = i;
      for (int i = 0; i < usbx_nhair; i++) if (!strcasecmp(slot[1], usbx_hair_names[i])) ch = i;
      if (!strcmp(slot[1], "blonde")) ch = 2;
      if (!strcmp(slot[1], "gray")) ch = 5;
      for (int i = 0; i < 3; i++) if (!strcasecmp(slot[2], usbx_age_names[i])) ca = i;
      if (!strcmp(slot[3], "male")) cg = 1;
      else if (!strcmp(slot[3], "female")) cg = 0;
      if (cs != skin || ch != hair || ca != age) return 0;
      if (gender >= 0 && cg != gender) return 0;
      return 1;
    }
    int kind = -1;
    if ((v = after_prefix(caption, "Fruit:"))) kind = USBX_OBJ_FRUIT;
    else if ((v = after_prefix(caption, "Flower:"))) kind = USBX_OBJ_FLOWER;
    if (kind < 0) return 0;
    int o = usbx_object_find(v, NULL);
    if (o < 0 || usbx_objects[o].kind != kind) return 0;
    return usbx_same_object(v, expected);
  }
  if (task && !strcmp(task, "mapping")) {
    const char *v = after_prefix(caption, "Object:");
    if (!v) v = caption;
    if (!strcasecmp(v, "error")) return 0;
    return usbx_same_object(v, expected);
  }
  /* math (and free "3 cups" captions) */
  if (!strcasecmp(caption, "error")) return 0;
  const char *v = after_prefix(caption, "Caption:");
  if (!v) v = caption;
  int c1, c2, o1, o2;
  char *n1 = NULL, *n2 = NULL;
  int ok = 0;
  if (usbx_parse_count_answer(v, &c1, &o1, &n1) == 0 && usbx_parse_count_answer(expected, &c2, &o2, &n2) == 0)
    ok = c1 == c2 && usbx_same_object(n1, n2);
  free(n1); free(n2);
  return ok;
}

static char *reading_text(const usbx_scene_reading *r) {
  usbx_buf b = {0};
  if (r->kind == 2) {
    usbx_buf_appendf(&b, "portrait: skin %s, hair %s, age %s, gender %s", r->skin < 0 ? "?" : usbx_skin_names[r->skin],
                     r->hair < 0 ? "?" : usbx_hair_names[r->hair], r->age < 0 ? "?" : usbx_age_names[r->age],
                     r->gender < 0 ? "?" : r->gender ? "male" : "female");
  } else if (r->kind <= 0 && r->n == 0) {
    usbx_buf_appendf(&b, "%s", r->kind < 0 ? r->why : "no objects");
  } else {
    usbx_buf_appendf(&b, "%d object%s:", r->n, r->n == 1 ? "" : "s");
    for (int i = 0; i < r->n; i++) usbx_buf_appendf(&b, "%s %s", i ? "," : "", r->obj[i] < 0 ? "?" : usbx_objects[r->obj[i]].sing);
    if (r->why[0]) usbx_buf_appendf(&b, " (%s)", r->why);
  }
  return b.data;
}

int usbx_sandbox_judge_rgb(const char *task, const uint8_t *rgb, int w, int h, const char *expected,
                           char **caption, char **analysis, int *yes) {
  usbx_scene_reading r;
  usbx_sandbox_read(rgb, w, h, &r);
  *caption = usbx_sandbox_caption(task, &r);
  *yes = usbx_sandbox_score(task, *caption, expected);
  char *rt = reading_text(&r);
  const char *t = task ? task : "math";
  if (!strcmp(t, "mapping"))
    *analysis = xasprintf("Phase 1 - Object Identification:\n%s\n\nPhase 2 - Object Evaluation:\nIdentified Object: %s\n"
                          "Expected Answer: %s\nScore: %s\n\nSandbox reading: %s",
                          *caption, strncmp(*caption, "Object: ", 8) ? *caption : *caption + 8, expected, *yes ? "YES" : "NO", rt);
  else if (!strcmp(t, "knowledge"))
    *analysis = xasprintf("Phase 1 - Caption:\n%s\n\nPhase 2 - Evaluation:\nGenerated: %s\nGT: %s\nScore: %s\n\nSandbox reading: %s",
                          *caption, *caption, expected, *yes ? "YES" : "NO", rt);
  else
    *analysis = xasprintf("Phase 1 - Image Captioning:\n%s\n\nPhase 2 - Caption Evaluation:\nGenerated Caption: %s\n"
                          "Expected Answer: %s\nScore: %s\n\nSandbox reading: %s",
                          *caption, *caption, expected, *yes ? "YES" : "NO", rt);
  free(rt);
  return 0;
}

int usbx_sandbox_judge(const char *task, const char *image_path, const char *expected, char **caption, char **analysis,
                       int *yes, char *err, size_t errlen) {
  if (!image_path || !expected || !caption || !analysis || !yes) { snprintf(err, errlen, "missing argument"); return -1; }
  *yes = 0;
  if (!usbx_file_exists(image_path)) {
    *caption = xstrdup("");
    *analysis = xstrdup("Image file not found");
    return 1;
  }
  int w, h;
  const char *why = NULL;
  uint8_t *rgb = usbx_image_read(image_path, &w, &h, 3, &why);
  if (!rgb) {
    *caption = xstrdup("");
    *analysis = xasprintf("Error: cannot decode %s: %s", image_path, why ? why : "unknown reason");
    return 1;
  }
  usbx_sandbox_judge_rgb(task, rgb, w, h, expected, caption, analysis, yes);
  free(rgb);
  return 0;
}
