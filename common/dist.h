/* dist.h — data-parallel training across processes: one process per GPU, ranks from the
 * torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
 * Collectives run through NCCL on the CUDA backend (libnccl.so.2, loaded at run time) and through
 * TCP via rank 0 on the CPU backend (summed in rank order, so CPU runs are deterministic).
 * Every rank must issue the same collectives in the same order. */
#ifndef USBX_DIST_H
#define USBX_DIST_H
#include <stdbool.h>
#include <stddef.h>
#include "ops.h"

typedef struct usbx_dist usbx_dist;

/* Rank and world size from the environment; world 1 when WORLD_SIZE is unset.  */
typedef struct { int rank, world, local_rank; const char *addr; int port; } usbx_dist_env;
int usbx_dist_env_read(usbx_dist_env *e, char *err, size_t errlen);

/* Connects the ranks (rank 0 listens on MASTER_PORT); NULL with err set on failure.  Call after
 * the backend is open (the CUDA device is chosen by LOCAL_RANK through USBX_CUDA_DEVICE, which
 * usbx_dist_select_device sets before the backend starts). */
usbx_dist *usbx_dist_open(usbx_backend *be, const usbx_dist_env *e, char *err, size_t errlen);
void usbx_dist_close(usbx_dist *d);
/* Sets USBX_CUDA_DEVICE to LOCAL_RANK unless it is already set. */
void usbx_dist_select_device(const usbx_dist_env *e);
int usbx_dist_rank(const usbx_dist *d);
int usbx_dist_world(const usbx_dist *d);

/* Sums over ranks, in place, on backend buffers (f32). */
void usbx_dist_allreduce(usbx_dist *d, float *buf, size_t n);
/* Sums over ranks into root's buffer, in place; other ranks' buffers are left unspecified. */
void usbx_dist_reduce(usbx_dist *d, float *buf, size_t n, int root);
/* Copies root's bytes to every rank, in place. */
void usbx_dist_broadcast(usbx_dist *d, void *buf, size_t bytes, int root);
/* Collectives between begin and end may be fused into one launch (NCCL group). */
void usbx_dist_group_begin(usbx_dist *d);
void usbx_dist_group_end(usbx_dist *d);
/* Sums n host doubles over ranks (small values such as losses). */
void usbx_dist_allreduce_host(usbx_dist *d, double *v, int n);

/* The --gpus N launcher: re-runs this program N times with RANK/WORLD_SIZE/LOCAL_RANK/
 * MASTER_ADDR/MASTER_PORT set (a free local port; NCCL_NVLS_ENABLE=0 kept), waits for all of
 * them, stops the others when one fails, and returns the exit status to use. */
int usbx_dist_launch(int n, char **argv);

#endif
