/* image.h — upstream's image transform (spec 7.6): the MaxLongEdgeMinShortEdgeResize size rule
 * and a PIL-style antialiased bicubic resize. */
#ifndef USBX_IMAGE_H
#define USBX_IMAGE_H
#include <stdint.h>

/* Output size for an input w x h under (max_long, min_short, stride, max_pixels), as upstream. */
void usbx_transform_size(int w, int h, int max_long, int min_short, int stride, long max_pixels, int *W, int *H);
/* Bicubic (a = -0.5) resize with antialiasing when shrinking, as PIL's Image.resize(BICUBIC):
 * separable, support scaled by the shrink factor, weights normalised, results rounded and
 * clamped to 0..255.  HWC uint8 with C channels. */
void usbx_resize_bicubic(const uint8_t *src, int w, int h, int C, uint8_t *dst, int W, int H);

#endif
