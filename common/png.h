/* png.h — PNG through stb_image / stb_image_write, compression through zlib. */
#ifndef USBX_PNG_H
#define USBX_PNG_H
#include <stdint.h>
#include <stddef.h>

/* Reads any image stb_image supports, converted to `channels` (1..4) 8-bit channels.
 * Returns a malloc'd HWC buffer, or NULL with a reason in *why (static string). */
uint8_t *usbx_image_read(const char *path, int *w, int *h, int channels, const char **why);
/* Writes an 8-bit HWC PNG atomically (temporary file + rename).  0 ok, -1 on failure. */
int usbx_png_write(const char *path, const uint8_t *pix, int w, int h, int channels);
/* Encodes to memory; caller frees.  NULL on failure. */
uint8_t *usbx_png_encode(const uint8_t *pix, int w, int h, int channels, size_t *len);

#endif
