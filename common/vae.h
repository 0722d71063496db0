/* vae.h — the FLUX autoencoder (spec 8) on a backend, channels-last, and the latent <-> token
 * and latent <-> pixel mappings shared by generation, editing and training. */
#ifndef USBX_VAE_H
#define USBX_VAE_H
#include "bagel.h"
#include "ops.h"

typedef struct usbx_vae usbx_vae;

/* Loads DIR/ae.safetensors with DIR/ae_config.json (FLUX values when absent).  Every tensor is
 * checked by name and shape first.  NULL with a reason in err. */
usbx_vae *usbx_vae_load(const char *dir, usbx_backend *be, char *err, size_t errlen);
void usbx_vae_free(usbx_vae *v);
const usbx_ae_config *usbx_vae_cfg(const usbx_vae *v);

/* decode: z (host [h, w, C] channels-last, the scaled latent as BAGEL produces it) ->
 * img (host [8h, 8w, 3] channels-last, unclamped, about [-1, 1]).  Applies z/scale + shift. */
void usbx_vae_decode(usbx_vae *v, const float *z, int h, int w, float *img);
/* encode: img (host [H, W, 3] in [-1, 1]) -> moments (host [H/8, W/8, 2C], may be NULL) and
 * z = scale * (mean + exp(logvar/2) * eps - shift) (host [H/8, W/8, C]); eps (host, same shape
 * as z) is the posterior noise — NULL gives the mean (deterministic). */
void usbx_vae_encode(usbx_vae *v, const float *img, int H, int W, const float *eps, float *z, float *moments);

/* tokens [h*w, p*p*C] <-> latent [h*p, w*p, C]: token(r, c)[(dy*p + dx)*C + ch] = z[r*p+dy][c*p+dx][ch]. */
void usbx_unpatchify(const float *tokens, int h, int w, int p, int C, float *z);
void usbx_patchify(const float *z, int h, int w, int p, int C, float *tokens);
/* [H, W, 3] in [-1, 1] -> uint8 RGB as upstream: trunc(clamp(0.5 x + 0.5, 0, 1) * 255). */
void usbx_pixels_to_u8(const float *img, size_t n, uint8_t *out);
/* uint8 -> [-1, 1] (ToTensor + Normalize(0.5, 0.5)). */
void usbx_u8_to_pixels(const uint8_t *in, size_t n, float *img);

#endif
