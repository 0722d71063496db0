/* png.c — stb_image for reading, stb_image_write for PNG encoding with zlib doing the deflate
 * (stb's built-in compressor is slower and weaker).  The stb implementations are compiled here,
 * privately (static), so no other object sees them. */
#include "png.h"
#include "util.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static unsigned char *zlib_compress_cb(unsigned char *data, int data_len, int *out_len, int quality) {
  uLongf cap = compressBound((uLong)data_len);
  unsigned char *out = malloc(cap);   /* freed by stb with STBIW_FREE (free) */
  if (!out) return NULL;
  /* Level 6 balances size and speed, as libpng's default. */
  if (compress2(out, &cap, data, (uLong)data_len, quality >= 8 ? 9 : 6) != Z_OK) { free(out); return NULL; }
  *out_len = (int)cap;
  return out;
}

/* stb declares some static functions it never defines; gcc reports that at the end of the
 * file, outside any push/pop, so this one stays off for the whole file. */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#ifdef __clang__
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO_WRAPPERS_FOR_WIDE
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBIW_ZLIB_COMPRESS zlib_compress_cb
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

uint8_t *usbx_image_read(const char *path, int *w, int *h, int channels, const char **why) {
  int n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) { if (why) *why = strerror(errno); return NULL; }
  uint8_t *p = stbi_load_from_file(f, w, h, &n, channels);
  fclose(f);
  if (!p) { if (why) *why = stbi_failure_reason(); return NULL; }
  /* Hand out memory from our allocator so callers free() it uniformly. */
  size_t bytes = (size_t)*w * (size_t)*h * (size_t)channels;
  uint8_t *out = xmalloc(bytes);
  memcpy(out, p, bytes);
  stbi_image_free(p);
  return out;
}

typedef struct { usbx_buf b; } mem_sink;
static void sink_write(void *ctx, void *data, int size) { usbx_buf_append(&((mem_sink *)ctx)->b, data, (size_t)size); }

uint8_t *usbx_png_encode(const uint8_t *pix, int w, int h, int channels, size_t *len) {
  mem_sink s = {0};
  if (!stbi_write_png_to_func(sink_write, &s, w, h, channels, pix, w * channels)) { usbx_buf_free(&s.b); return NULL; }
  *len = s.b.len;
  return (uint8_t *)s.b.data;
}

int usbx_png_write(const char *path, const uint8_t *pix, int w, int h, int channels) {
  size_t n = 0;
  uint8_t *png = usbx_png_encode(pix, w, h, channels, &n);
  if (!png) { errno = EINVAL; return -1; }
  int rc = usbx_write_file_atomic(path, png, n);
  free(png);
  return rc;
}
