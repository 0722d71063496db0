/* dist.c — see dist.h.  NCCL is loaded with dlopen so the build needs neither its headers nor
 * its library; the few declarations below are NCCL's stable C interface (nccl.h, 2.x). */
#include "dist.h"
#include "util.h"
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef USBX_HAVE_CUDA
#include "cuda_extra.h"
#endif

/* ---------------------------------------------------------------- NCCL interface */
typedef struct { char internal[128]; } nccl_unique_id;
typedef void *nccl_comm;
enum { NCCL_SUCCESS = 0, NCCL_FLOAT32 = 7, NCCL_FLOAT64 = 8, NCCL_UINT8 = 1, NCCL_SUM = 0 };
typedef struct {
  void *lib;
  int (*get_unique_id)(nccl_unique_id *);
  int (*comm_init_rank)(nccl_comm *, int, nccl_unique_id, int);
  int (*comm_destroy)(nccl_comm);
  int (*all_reduce)(const void *, void *, size_t, int, int, nccl_comm, void *);
  int (*reduce)(const void *, void *, size_t, int, int, int, nccl_comm, void *);
  int (*broadcast)(const void *, void *, size_t, int, int, nccl_comm, void *);
  int (*group_start)(void);
  int (*group_end)(void);
  const char *(*error_string)(int);
} nccl_api;

struct usbx_dist {
  usbx_backend *be;
  int rank, world;
  int *peers;          /* rank 0: socket of each rank (index 0 unused); others: peers[0] = rank 0 */
  nccl_api nccl;
  nccl_comm comm;
  double *d_host;      /* NCCL: device staging for allreduce_host */
  int d_host_cap;
};

int usbx_dist_rank(const usbx_dist *d) { return d ? d->rank : 0; }
int usbx_dist_world(const usbx_dist *d) { return d ? d->world : 1; }

static int env_int(const char *name, int def, int *out, char *err, size_t errlen) {
  const char *s = getenv(name);
  if (!s || !*s) { *out = def; return 0; }
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > 1 << 20) { snprintf(err, errlen, "%s=%s: expected a non-negative integer", name, s); return -1; }
  *out = (int)v;
  return 0;
}

int usbx_dist_env_read(usbx_dist_env *e, char *err, size_t errlen) {
  memset(e, 0, sizeof *e);
  if (env_int("WORLD_SIZE", 1, &e->world, err, errlen) || env_int("RANK", 0, &e->rank, err, errlen) ||
      env_int("LOCAL_RANK", e->rank, &e->local_rank, err, errlen) || env_int("MASTER_PORT", 29500, &e->port, err, errlen))
    return -1;
  e->addr = getenv("MASTER_ADDR") && *getenv("MASTER_ADDR") ? getenv("MASTER_ADDR") : "127.0.0.1";
  if (e->world < 1 || e->rank >= e->world) { snprintf(err, errlen, "RANK=%d is not below WORLD_SIZE=%d", e->rank, e->world); return -1; }
  if (e->port < 1 || e->port > 65535) { snprintf(err, errlen, "MASTER_PORT=%d is not a port", e->port); return -1; }
  return 0;
}

void usbx_dist_select_device(const usbx_dist_env *e) {
  if (e->world > 1 && !getenv("USBX_CUDA_DEVICE")) {
    char s[16];
    snprintf(s, sizeof s, "%d", e->local_rank);
    setenv("USBX_CUDA_DEVICE", s, 1);
  }
}

/* ---------------------------------------------------------------- TCP */
static void send_all(usbx_dist *d, int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) usbx_die("rank %d: connection lost while sending: %s", d->rank, strerror(errno));
    c += k; n -= (size_t)k;
  }
}
static void recv_all(usbx_dist *d, int fd, void *p, size_t n) {
  char *c = p;
  while (n) {
    ssize_t k = recv(fd, c, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) usbx_die("rank %d: connection lost while receiving (another rank failed?)", d->rank);
    c += k; n -= (size_t)k;
  }
}

static int tcp_connect_all(usbx_dist *d, const usbx_dist_env *e, char *err, size_t errlen) {
  d->peers = xcalloc((size_t)d->world, sizeof(int));
  for (int i = 0; i < d->world; i++) d->peers[i] = -1;
  int one = 1;
  if (d->rank == 0) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) { snprintf(err, errlen, "socket: %s", strerror(errno)); return -1; }
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e->port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, d->world)) {
      snprintf(err, errlen, "rank 0: cannot listen on port %d: %s", e->port, strerror(errno));
      close(ls);
      return -1;
    }
    for (int n = 1; n < d->world; n++) {
      /* the other ranks load the model first; ten minutes without one means it is not coming */
      struct pollfd pf = {.fd = ls, .events = POLLIN};
      int pr = poll(&pf, 1, 600 * 1000);
      if (pr < 0 && errno == EINTR) { n--; continue; }
      if (pr <= 0) {
        snprintf(err, errlen, "rank 0: %d of %d ranks connected within 10 minutes on port %d", n, d->world - 1, e->port);
        close(ls);
        return -1;
      }
      int fd = accept(ls, NULL, NULL);
      if (fd < 0) { if (errno == EINTR) { n--; continue; } snprintf(err, errlen, "accept: %s", strerror(errno)); close(ls); return -1; }
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      int32_t r = -1;
      recv_all(d, fd, &r, sizeof r);
      if (r < 1 || r >= d->world || d->peers[r] >= 0) { snprintf(err, errlen, "rank 0: unexpected hello from rank %d", r); close(fd); close(ls); return -1; }
      d->peers[r] = fd;
    }
    close(ls);
    return 0;
  }
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", e->port);
  int gai = getaddrinfo(e->addr, port, &hints, &res);
  if (gai) { snprintf(err, errlen, "MASTER_ADDR=%s: %s", e->addr, gai_strerror(gai)); return -1; }
  /* rank 0 may still be loading the model: retry for up to ten minutes */
  int fd = -1;
  for (int tries = 0; tries < 6000; tries++) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) break;
    if (connect(fd, res->ai_addr, res->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  freeaddrinfo(res);
  if (fd < 0) { snprintf(err, errlen, "rank %d: cannot reach rank 0 at %s:%d", d->rank, e->addr, e->port); return -1; }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int32_t r = d->rank;
  send_all(d, fd, &r, sizeof r);
  d->peers[0] = fd;
  return 0;
}

/* rank 0 sums every rank's values in rank order and sends the sum back */
static void tcp_allreduce(usbx_dist *d, void *buf, size_t n, bool f64) {
  size_t es = f64 ? sizeof(double) : sizeof(float), bytes = n * es;
  if (d->rank != 0) {
    send_all(d, d->peers[0], buf, bytes);
    recv_all(d, d->peers[0], buf, bytes);
    return;
  }
  void *tmp = xmalloc(bytes ? bytes : 1);
  for (int r = 1; r < d->world; r++) {
    recv_all(d, d->peers[r], tmp, bytes);
    if (f64) for (size_t i = 0; i < n; i++) ((double *)buf)[i] += ((double *)tmp)[i];
    else for (size_t i = 0; i < n; i++) ((float *)buf)[i] += ((float *)tmp)[i];
  }
  free(tmp);
  for (int r = 1; r < d->world; r++) send_all(d, d->peers[r], buf, bytes);
}

static void tcp_broadcast(usbx_dist *d, void *buf, size_t bytes, int root) {
  if (root != 0) {
    if (d->rank == root) send_all(d, d->peers[0], buf, bytes);
    else if (d->rank == 0) recv_all(d, d->peers[root], buf, bytes);
  }
  if (d->rank == 0) { for (int r = 1; r < d->world; r++) if (r != root) send_all(d, d->peers[r], buf, bytes); }
  else if (d->rank != root) recv_all(d, d->peers[0], buf, bytes);
}

/* ---------------------------------------------------------------- NCCL */
static void nccl_check(usbx_dist *d, int rc, const char *what) {
  if (rc != NCCL_SUCCESS) usbx_die("rank %d: NCCL %s failed: %s", d->rank, what, d->nccl.error_string ? d->nccl.error_string(rc) : "?");
}

#ifdef USBX_HAVE_CUDA
static int nccl_load(nccl_api *n, char *err, size_t errlen) {
  const char *names[] = {getenv("USBX_NCCL_LIB"), "libnccl.so.2", "libnccl.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0] && !n->lib; i++)
    if (names[i] && *names[i]) n->lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
  if (!n->lib) {
    snprintf(err, errlen, "NCCL not found (libnccl.so.2; set USBX_NCCL_LIB or LD_LIBRARY_PATH): %s", dlerror());
    return -1;
  }
  struct { void **fn; const char *name; } syms[] = {
    {(void **)&n->get_unique_id, "ncclGetUniqueId"}, {(void **)&n->comm_init_rank, "ncclCommInitRank"},
    {(void **)&n->comm_destroy, "ncclCommDestroy"}, {(void **)&n->all_reduce, "ncclAllReduce"},
    {(void **)&n->reduce, "ncclReduce"}, {(void **)&n->broadcast, "ncclBroadcast"},
    {(void **)&n->group_start, "ncclGroupStart"}, {(void **)&n->group_end, "ncclGroupEnd"},
    {(void **)&n->error_string, "ncclGetErrorString"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    *syms[i].fn = dlsym(n->lib, syms[i].name);
    if (!*syms[i].fn) { snprintf(err, errlen, "NCCL library lacks %s", syms[i].name); return -1; }
  }
  return 0;
}
#endif

usbx_dist *usbx_dist_open(usbx_backend *be, const usbx_dist_env *e, char *err, size_t errlen) {
  usbx_dist *d = xcalloc(1, sizeof *d);
  d->be = be; d->rank = e->rank; d->world = e->world;
  if (be->dev == USBX_DEV_CUDA) {
#ifdef USBX_HAVE_CUDA
    /* multicast (NVLS) can take a shared host's GPUs down: keep it off unless the user decided */
    setenv("NCCL_NVLS_ENABLE", getenv("NCCL_NVLS_ENABLE") ? getenv("NCCL_NVLS_ENABLE") : "0", 1);
    if (nccl_load(&d->nccl, err, errlen)) { usbx_dist_close(d); return NULL; }
#endif
  }
  if (tcp_connect_all(d, e, err, errlen)) { usbx_dist_close(d); return NULL; }
  if (d->nccl.lib) {
    nccl_unique_id id;
    if (d->rank == 0) {
      nccl_check(d, d->nccl.get_unique_id(&id), "ncclGetUniqueId");
      for (int r = 1; r < d->world; r++) send_all(d, d->peers[r], &id, sizeof id);
    } else recv_all(d, d->peers[0], &id, sizeof id);
    nccl_check(d, d->nccl.comm_init_rank(&d->comm, d->world, id, d->rank), "ncclCommInitRank");
  }
  return d;
}

void usbx_dist_close(usbx_dist *d) {
  if (!d) return;
  if (d->comm) d->nccl.comm_destroy(d->comm);
  if (d->d_host) d->be->free(d->be, d->d_host);
  if (d->peers) for (int i = 0; i < d->world; i++) if (d->peers[i] >= 0) close(d->peers[i]);
  free(d->peers);
  /* the NCCL library stays loaded: its threads may outlive the communicator briefly */
  free(d);
}

/* NCCL runs on the backend's current lane (ops.h set_lane) */
static void *cur_stream(usbx_dist *d) {
#ifdef USBX_HAVE_CUDA
  return usbx_cuda_stream(d->be);
#else
  (void)d;
  return NULL;
#endif
}

void usbx_dist_allreduce(usbx_dist *d, float *buf, size_t n) {
  if (!d || d->world == 1 || !n) return;
  if (d->comm) nccl_check(d, d->nccl.all_reduce(buf, buf, n, NCCL_FLOAT32, NCCL_SUM, d->comm, cur_stream(d)), "ncclAllReduce");
  else tcp_allreduce(d, buf, n, false);
}

void usbx_dist_reduce(usbx_dist *d, float *buf, size_t n, int root) {
  if (!d || d->world == 1 || !n) return;
  if (d->comm) nccl_check(d, d->nccl.reduce(buf, buf, n, NCCL_FLOAT32, NCCL_SUM, root, d->comm, cur_stream(d)), "ncclReduce");
  else tcp_allreduce(d, buf, n, false);
}

void usbx_dist_broadcast(usbx_dist *d, void *buf, size_t bytes, int root) {
  if (!d || d->world == 1 || !bytes) return;
  if (d->comm) nccl_check(d, d->nccl.broadcast(buf, buf, bytes, NCCL_UINT8, root, d->comm, cur_stream(d)), "ncclBroadcast");
  else tcp_broadcast(d, buf, bytes, root);
}

void usbx_dist_group_begin(usbx_dist *d) { if (d && d->comm) nccl_check(d, d->nccl.group_start(), "ncclGroupStart"); }
void usbx_dist_group_end(usbx_dist *d) { if (d && d->comm) nccl_check(d, d->nccl.group_end(), "ncclGroupEnd"); }

void usbx_dist_allreduce_host(usbx_dist *d, double *v, int n) {
  if (!d || d->world == 1 || n <= 0) return;
  if (!d->comm) { tcp_allreduce(d, v, (size_t)n, true); return; }
  if (n > d->d_host_cap) {
    if (d->d_host) d->be->free(d->be, d->d_host);
    d->d_host = d->be->alloc(d->be, sizeof(double) * (size_t)n);
    d->d_host_cap = n;
  }
  d->be->upload(d->be, d->d_host, v, sizeof(double) * (size_t)n);
  nccl_check(d, d->nccl.all_reduce(d->d_host, d->d_host, (size_t)n, NCCL_FLOAT64, NCCL_SUM, d->comm, cur_stream(d)), "ncclAllReduce");
  d->be->download(d->be, v, d->d_host, sizeof(double) * (size_t)n);
}

/* ---------------------------------------------------------------- launcher */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) usbx_die("socket: %s", strerror(errno));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len)) usbx_die("cannot find a free port: %s", strerror(errno));
  close(fd);
  return ntohs(a.sin_port);
}

int usbx_dist_launch(int n, char **argv) {
  int port = free_port();
  pid_t *pids = xcalloc((size_t)n, sizeof(pid_t));
  fflush(NULL);
  for (int r = 0; r < n; r++) {
    pid_t p = fork();
    if (p < 0) usbx_die("fork: %s", strerror(errno));
    if (p == 0) {
      char v[32];
      snprintf(v, sizeof v, "%d", r); setenv("RANK", v, 1); setenv("LOCAL_RANK", v, 1);
      snprintf(v, sizeof v, "%d", n); setenv("WORLD_SIZE", v, 1);
      snprintf(v, sizeof v, "%d", port); setenv("MASTER_PORT", v, 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      if (!getenv("NCCL_NVLS_ENABLE")) setenv("NCCL_NVLS_ENABLE", "0", 1);
      execv("/proc/self/exe", argv);
      usbx_err("cannot run %s: %s", argv[0], strerror(errno));
      _exit(127);
    }
    pids[r] = p;
  }
  int status = 0, left = n;
  while (left > 0) {
    int st;
    pid_t p = wait(&st);
    if (p < 0) { if (errno == EINTR) continue; break; }
    int r = -1;
    for (int i = 0; i < n; i++) if (pids[i] == p) r = i;
    if (r < 0) continue;
    pids[r] = 0;
    left--;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (code != 0 && status == 0) {
      status = code;
      usbx_err("rank %d exited with status %d; stopping the other ranks", r, code);
      for (int i = 0; i < n; i++) if (pids[i] > 0) kill(pids[i], SIGTERM);
    }
  }
  free(pids);
  return status;
}
