/* render.c — the sandbox world's procedural drawing (see render.h).
 *
 * Icons: every catalogue object i gets a unique (shape, colour, pattern) triple: 6 shapes
 * (circle, square, triangle up, triangle down, wide bar, tall bar) x 9 palette colours x 3
 * patterns (solid, dark centre dot, dark cap across the wide end) = 162 icons.  The shapes differ in
 * aspect ratio, fill ratio and vertical asymmetry, the patterns in the dark region's presence and
 * centroid (centre or end): features that survive 64x64 images, mild noise and blur.
 * Scenes: instances sit in distinct cells of a grid (1x1 .. 3x3) with a margin of at least 2 px
 * to the cell edges, so they never touch; size and position are jittered per instance.
 * Portraits: on a pale-blue background, a face disc in one of three skin colours, a hair cap in
 * the hair colour (long side hair for women), small face for kids, forehead lines for the old. */
#include "render.h"
#include "png.h"
#include "util.h"
#include "jsonl.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

const uint8_t usbx_palette[USBX_NCOLOURS][3] = {
  {220, 40, 40}, {245, 140, 20}, {225, 195, 0}, {40, 160, 60}, {0, 160, 170},
  {40, 80, 220}, {140, 60, 200}, {230, 70, 170}, {130, 80, 40},
};
const char *const usbx_colour_names[USBX_NCOLOURS] = {"red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown"};
const char *const usbx_shape_names[USBX_NSHAPES] = {"circle", "square", "triangle-up", "triangle-down", "wide-bar", "tall-bar"};
const char *const usbx_pattern_names[USBX_NPATS] = {"solid", "dot", "cap"};
const uint8_t usbx_bg_scene[3] = {255, 255, 255}, usbx_bg_portrait[3] = {200, 222, 245};
static const uint8_t dark[3] = {25, 25, 25};
const uint8_t usbx_skin_rgb[3][3] = {{125, 80, 50}, {240, 200, 175}, {200, 150, 100}};
const uint8_t usbx_hair_rgb[][3] = {{20, 20, 20}, {85, 45, 15}, {235, 205, 90}, {195, 55, 25}, {250, 250, 250}, {140, 140, 140}};
static const uint8_t shirt[3] = {70, 95, 130};

#define NICONS (USBX_NSHAPES * USBX_NCOLOURS * USBX_NPATS)

void usbx_object_icon(int obj, int *shape, int *colour, int *pattern) {
  int c = (obj * 53) % NICONS;   /* 53 is coprime with 162: unique for obj < 162 */
  *shape = c % USBX_NSHAPES;
  *colour = (c / USBX_NSHAPES) % USBX_NCOLOURS;
  *pattern = c / (USBX_NSHAPES * USBX_NCOLOURS);
}
int usbx_icon_object(int shape, int colour, int pattern) {
  for (int i = 0; i < usbx_nobjects && i < NICONS; i++) {
    int s, c, p;
    usbx_object_icon(i, &s, &c, &p);
    if (s == shape && c == colour && p == pattern) return i;
  }
  return -1;
}

/* (u, v) in [-1, 1]^2 of the icon box, v down */
static int inside(int shape, double u, double v) {
  switch (shape) {
  case USBX_SHAPE_CIRCLE: return u * u + v * v <= 1.0;
  case USBX_SHAPE_SQUARE: return fabs(u) <= 0.86 && fabs(v) <= 0.86;
  case 2: return v >= -1 && v <= 1 && fabs(u) <= (v + 1) / 2;       /* triangle up */
  case 3: return v >= -1 && v <= 1 && fabs(u) <= (1 - v) / 2;       /* triangle down */
  case 4: return fabs(u) <= 1 && fabs(v) <= 0.45;                   /* wide bar */
  case 5: return fabs(u) <= 0.45 && fabs(v) <= 1;                   /* tall bar */
  }
  return 0;
}

static void put(uint8_t *rgb, int w, int x, int y, const uint8_t c[3]) {
  uint8_t *p = rgb + ((size_t)y * (size_t)w + (size_t)x) * 3;
  p[0] = c[0]; p[1] = c[1]; p[2] = c[2];
}

static void draw_icon(uint8_t *rgb, int w, int h, int obj, double cx, double cy, double s) {
  int shape, colour, pattern;
  usbx_object_icon(obj, &shape, &colour, &pattern);
  double half = s / 2;
  int x0 = (int)floor(cx - half) - 1, x1 = (int)ceil(cx + half) + 1;
  int y0 = (int)floor(cy - half) - 1, y1 = (int)ceil(cy + half) + 1;
  for (int y = y0 < 0 ? 0 : y0; y <= y1 && y < h; y++)
    for (int x = x0 < 0 ? 0 : x0; x <= x1 && x < w; x++) {
      double u = (x + 0.5 - cx) / half, v = (y + 0.5 - cy) / half;
      if (!inside(shape, u, v)) continue;
      const uint8_t *c = usbx_palette[colour];
      if (pattern == USBX_PAT_DOT && u * u + v * v <= 0.32 * 0.32) c = dark;
      if (pattern == USBX_PAT_CAP) {   /* a dark band across the wide end: the top (bottom of an upward triangle) */
        double lim = shape == USBX_SHAPE_SQUARE ? -0.34 : shape == USBX_SHAPE_WIDE ? -0.16 :
                     shape == USBX_SHAPE_TRI_UP || shape == USBX_SHAPE_TRI_DOWN ? -0.55 : -0.4;
        if (shape == USBX_SHAPE_TRI_UP ? v >= -lim : v <= lim) c = dark;
      }
      put(rgb, w, x, y, c);
    }
}

static uint8_t *canvas(int size, const uint8_t bg[3]) {
  uint8_t *rgb = xmalloc((size_t)size * (size_t)size * 3);
  for (size_t i = 0; i < (size_t)size * (size_t)size; i++) memcpy(rgb + i * 3, bg, 3);
  return rgb;
}

uint8_t *usbx_render_scene(const int *objs, int n, int size, uint64_t seed, char *err, size_t errlen) {
  if (size < USBX_RENDER_MIN) { snprintf(err, errlen, "image size %d is below %d", size, USBX_RENDER_MIN); return NULL; }
  if (n < 0 || n > 9) { snprintf(err, errlen, "cannot draw %d objects (0..9)", n); return NULL; }
  for (int i = 0; i < n; i++)
    if (objs[i] < 0 || objs[i] >= usbx_nobjects) { snprintf(err, errlen, "unknown object class %d", objs[i]); return NULL; }
  usbx_rng r;
  usbx_rng_seed(&r, seed);
  int cols, rows;
  if (n <= 1) cols = rows = 1;
  else if (n == 2) { cols = 2; rows = 1; }
  else if (n <= 4) cols = rows = 2;
  else if (n <= 6) { cols = 3; rows = 2; }
  else cols = rows = 3;
  if (cols != rows && usbx_rng_below(&r, 2)) { int t = cols; cols = rows; rows = t; }
  int cells[9];
  for (int i = 0; i < cols * rows; i++) cells[i] = i;
  for (int i = cols * rows - 1; i > 0; i--) { int j = (int)usbx_rng_below(&r, (uint64_t)i + 1); int t = cells[i]; cells[i] = cells[j]; cells[j] = t; }
  uint8_t *rgb = canvas(size, usbx_bg_scene);
  double cw = (double)size / cols, ch = (double)size / rows, cell = cw < ch ? cw : ch;
  for (int i = 0; i < n; i++) {
    int cx_i = cells[i] % cols, cy_i = cells[i] / cols;
    double s = cell * (0.68 + 0.12 * usbx_rng_uniform(&r));
    double jx = (cw - s) / 2 - 2, jy = (ch - s) / 2 - 2;
    if (jx < 0) jx = 0;
    if (jy < 0) jy = 0;
    double cx = (cx_i + 0.5) * cw + (2 * usbx_rng_uniform(&r) - 1) * jx;
    double cy = (cy_i + 0.5) * ch + (2 * usbx_rng_uniform(&r) - 1) * jy;
    draw_icon(rgb, size, size, objs[i], cx, cy, s);
  }
  return rgb;
}

uint8_t *usbx_render_count(int obj, int n, int size, uint64_t seed, char *err, size_t errlen) {
  int objs[9];
  if (n < 0 || n > 9) { snprintf(err, errlen, "cannot draw %d objects (0..9)", n); return NULL; }
  for (int i = 0; i < n; i++) objs[i] = obj;
  return usbx_render_scene(objs, n, size, seed, err, errlen);
}

static void disc(uint8_t *rgb, int size, double cx, double cy, double rad, const uint8_t c[3]) {
  for (int y = (int)(cy - rad) - 1; y <= (int)(cy + rad) + 1; y++)
    for (int x = (int)(cx - rad) - 1; x <= (int)(cx + rad) + 1; x++) {
      if (x < 0 || y < 0 || x >= size || y >= size) continue;
      double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (dx * dx + dy * dy <= rad * rad) put(rgb, size, x, y, c);
    }
}
static void rect(uint8_t *rgb, int size, double x0, double y0, double x1, double y1, const uint8_t c[3]) {
  for (int y = (int)floor(y0); y < (int)ceil(y1); y++)
    for (int x = (int)floor(x0); x < (int)ceil(x1); x++)
      if (x >= 0 && y >= 0 && x < size && y < size && x + 0.5 >= x0 && x + 0.5 <= x1 && y + 0.5 >= y0 && y + 0.5 <= y1)
        put(rgb, size, x, y, c);
}

uint8_t *usbx_render_portrait(int skin, int hair, int age, int gender, int size, uint64_t seed) {
  usbx_rng r;
  usbx_rng_seed(&r, seed);
  uint8_t *rgb = canvas(size, usbx_bg_portrait);
  double S = size;
  double rad = (age == 0 ? 0.16 : 0.29) * S * (0.97 + 0.06 * usbx_rng_uniform(&r));
  double cx = S / 2 + (usbx_rng_uniform(&r) - 0.5) * 0.04 * S;
  double cy = (age == 0 ? 0.50 : 0.46) * S + (usbx_rng_uniform(&r) - 0.5) * 0.03 * S;
  const uint8_t *hc = usbx_hair_rgb[hair], *sc = usbx_skin_rgb[skin];
  /* body */
  rect(rgb, size, cx - 1.5 * rad, cy + 1.05 * rad, cx + 1.5 * rad, S, shirt);
  /* long hair behind the face */
  if (gender == 0) rect(rgb, size, cx - 1.55 * rad, cy - 0.35 * rad, cx + 1.55 * rad, cy + 1.0 * rad, hc);
  disc(rgb, size, cx, cy - 0.35 * rad, 1.1 * rad, hc);
  disc(rgb, size, cx, cy, rad, sc);
  /* eyes and mouth */
  double er = 0.1 * rad < 1.2 ? 1.2 : 0.1 * rad;
  disc(rgb, size, cx - 0.35 * rad, cy - 0.05 * rad, er, dark);
  disc(rgb, size, cx + 0.35 * rad, cy - 0.05 * rad, er, dark);
  double t = 0.08 * rad < 2 ? 2 : 0.08 * rad;
  static const uint8_t mouth[3] = {150, 30, 40};
  rect(rgb, size, cx - 0.3 * rad, cy + 0.45 * rad - t / 2, cx + 0.3 * rad, cy + 0.45 * rad + t / 2, mouth);
  if (age == 2) {
    uint8_t lc[3] = {(uint8_t)(sc[0] / 2), (uint8_t)(sc[1] / 2), (uint8_t)(sc[2] / 2)};
    double lt = 0.1 * rad < 2 ? 2 : 0.1 * rad;
    rect(rgb, size, cx - 0.45 * rad, cy - 0.62 * rad - lt / 2, cx + 0.45 * rad, cy - 0.62 * rad + lt / 2, lc);
    rect(rgb, size, cx - 0.45 * rad, cy - 0.40 * rad - lt / 2, cx + 0.45 * rad, cy - 0.40 * rad + lt / 2, lc);
  }
  return rgb;
}

uint8_t *usbx_render_answer(const char *task, const char *answer, int size, uint64_t seed, char *err, size_t errlen) {
  if (!answer) { snprintf(err, errlen, "no answer to draw"); return NULL; }
  int count = 0, obj = -1;
  char *noun = NULL;
  if (!task || strcmp(task, "mapping")) {
    if (usbx_parse_count_answer(answer, &count, &obj, &noun) == 0) {
      if (obj < 0) { snprintf(err, errlen, "the sandbox has no object \"%s\"", noun); free(noun); return NULL; }
      free(noun);
      if (count < 1 || count > 9) { snprintf(err, errlen, "cannot draw %d objects (1..9)", count); return NULL; }
      return usbx_render_count(obj, count, size, seed, err, errlen);
    }
  }
  int skin, hair, age, gender;
  if (usbx_parse_person(answer, &skin, &hair, &age, &gender) == 0) {
    if (gender < 0) gender = (int)(seed & 1);
    return usbx_render_portrait(skin, hair, age, gender, size, seed);
  }
  obj = usbx_object_find(answer, NULL);
  if (obj < 0) { snprintf(err, errlen, "the sandbox has no object \"%s\"", answer); return NULL; }
  return usbx_render_count(obj, 1, size, seed, err, errlen);
}

int usbx_render_task(jv rec, const char *path, int size, uint64_t seed, char *err, size_t errlen) {
  const char *task = usbx_jv_str(rec, "task");
  const char *ans = usbx_jv_str(rec, "answer");
  if (!ans) ans = usbx_jv_str(rec, "Answer");
  if (!task && (usbx_jv_has(rec, "Question_A") || usbx_jv_has(rec, "Question_B"))) task = "mapping";
  uint8_t *rgb = usbx_render_answer(task, ans, size, seed, err, errlen);
  if (!rgb) return -1;
  int rc = usbx_png_write(path, rgb, size, size, 3);
  free(rgb);
  if (rc) { snprintf(err, errlen, "%s: cannot write the PNG", path); return -1; }
  return 0;
}

void usbx_perturb_noise(uint8_t *rgb, int w, int h, double sigma, uint64_t seed) {
  usbx_rng r;
  usbx_rng_seed(&r, seed);
  for (size_t i = 0; i < (size_t)w * (size_t)h * 3; i++) {
    double v = rgb[i] + sigma * usbx_rng_normal(&r);
    rgb[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lrint(v));
  }
}

void usbx_perturb_blur(uint8_t *rgb, int w, int h, int radius) {
  if (radius < 1) return;
  uint8_t *src = xmalloc((size_t)w * (size_t)h * 3);
  memcpy(src, rgb, (size_t)w * (size_t)h * 3);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++) {
        int sum = 0, cnt = 0;
        for (int dy = -radius; dy <= radius; dy++)
          for (int dx = -radius; dx <= radius; dx++) {
            int xx = x + dx, yy = y + dy;
            if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
            sum += src[((size_t)yy * (size_t)w + (size_t)xx) * 3 + c];
            cnt++;
          }
        rgb[((size_t)y * (size_t)w + (size_t)x) * 3 + c] = (uint8_t)((sum + cnt / 2) / cnt);
      }
  free(src);
}
