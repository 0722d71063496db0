/* attn_units.h — the work plan of the one-kernel Hopper training attention backward
 * (cuda_attn_flash.cu's k_fa_bwd_tma), in plain C so that the CPU tests check it. */
#ifndef USBX_ATTN_UNITS_H
#define USBX_ATTN_UNITS_H
#ifdef __cplusplus
extern "C" {
#endif

#define USBX_ATTN_UNIT_SHIFT 16   /* a unit: key block << USBX_ATTN_UNIT_SHIFT | chunk index */
#define USBX_ATTN_UNIT_COST 2     /* a unit's own cost (K/V loads, dK/dV reductions), in query tiles */

/* nkb[kb]: the active query tiles of each of np 128-key blocks; H query heads (a unit's H blocks
 * launch together); sms multiprocessors.  Writes the units in launch order into units (room for
 * 5·np) and their count into *n_units; returns the chunk (the most query tiles of a unit; a block's
 * unit c takes its list's entries chunk·c ..).  The chunk is the one of max/1 .. max/4 (max: the
 * largest block) whose simulated launch ends first: units by falling size (then key block, then
 * index), each block to the first multiprocessor free, costing its tiles plus
 * USBX_ATTN_UNIT_COST. */
int usbx_attn_plan_units(const int *nkb, int np, int H, int sms, int *units, int *n_units);

#ifdef __cplusplus
}
#endif
#endif
