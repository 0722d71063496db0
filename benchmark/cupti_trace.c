/* A CUDA injection library (CUDA_INJECTION64_PATH) that writes every kernel, copy and memset the
 * GPU ran and every runtime/driver API call the host made, with CUPTI's timestamps (one clock for
 * both), to $USBX_CUPTI_TRACE, one line each:
 *   K start end stream correlation name      a kernel
 *   C start end stream correlation bytes     a copy
 *   Z start end stream correlation bytes     a memset
 *   R start end thread correlation name      a runtime API call (D: a driver API call)
 * benchmark/gpu_idle.py reads it.  Built on the device machine against its CUPTI
 * (benchmark/device_env.sh cupti_build), because the activity records are versioned structs: the
 * build passes the newest versions its header declares as KREC, MCREC and MSREC.  Nsight Systems,
 * which would show the same timeline, does not produce reports on those machines. */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *out;

#define CHECK(call)                                                              \
  do {                                                                           \
    CUptiResult r_ = (call);                                                     \
    if (r_ != CUPTI_SUCCESS) {                                                   \
      const char *s_ = "?";                                                      \
      cuptiGetResultString(r_, &s_);                                             \
      fprintf(stderr, "cupti_trace: %s: %s\n", #call, s_);                       \
      return r_;                                                                 \
    }                                                                            \
  } while (0)

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records) {
  *size = 16u << 20;
  *buf = aligned_alloc(8, *size);
  *max_records = 0;
  if (!*buf) { fprintf(stderr, "cupti_trace: out of memory\n"); *size = 0; }
}

static const char *api_name(CUpti_CallbackDomain dom, CUpti_CallbackId id) {
  const char *s = NULL;
  return cuptiGetCallbackName(dom, id, &s) == CUPTI_SUCCESS && s ? s : "?";
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid) {
  (void)ctx; (void)stream; (void)size;
  CUpti_Activity *r = NULL;
  while (out && cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
      const KREC *k = (const KREC *)r;
      fprintf(out, "K %llu %llu %u %u %s\n", (unsigned long long)k->start, (unsigned long long)k->end, k->streamId, k->correlationId, k->name);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const MCREC *m = (const MCREC *)r;
      fprintf(out, "C %llu %llu %u %u %llu\n", (unsigned long long)m->start, (unsigned long long)m->end, m->streamId, m->correlationId,
              (unsigned long long)m->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const MSREC *m = (const MSREC *)r;
      fprintf(out, "Z %llu %llu %u %u %llu\n", (unsigned long long)m->start, (unsigned long long)m->end, m->streamId, m->correlationId,
              (unsigned long long)m->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME:
    case CUPTI_ACTIVITY_KIND_DRIVER: {
      const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)r;
      int rt = r->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
      fprintf(out, "%c %llu %llu %u %u %s\n", rt ? 'R' : 'D', (unsigned long long)a->start, (unsigned long long)a->end, a->threadId,
              a->correlationId, api_name(rt ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid));
      break;
    }
    default:
      break;
    }
  }
  free(buf);
}

static void finish(void) {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  if (out) fclose(out);
  out = NULL;
}

int InitializeInjection(void) {
  const char *path = getenv("USBX_CUPTI_TRACE");
  if (!path || !(out = fopen(path, "w"))) {
    fprintf(stderr, "cupti_trace: set USBX_CUPTI_TRACE to a writable file\n");
    return 0;
  }
  CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER));
  atexit(finish);
  return 1;
}
