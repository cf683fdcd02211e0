/*
 * gv_kvm: the thin native layer of Guardvisor.
 *
 * One N-API function per KVM ioctl (named after it), plus the memory-mapping
 * and thread-kick primitives the TypeScript layer needs. It holds no policy and
 * no state beyond file descriptors and the table of mappings it created.
 *
 * Struct layouts of <linux/kvm.h> are exported as offset tables computed with
 * offsetof(), so TypeScript never hard-codes a kernel ABI offset.
 *
 * Errors: a JS Error whose `code` is the errno name (e.g. "EINVAL") and whose
 * `syscall` is the ioctl name; the TypeScript layer wraps it in a typed error.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The signal used to kick a vCPU thread out of KVM_RUN. */
#define GV_KICK_SIGNAL (SIGRTMIN + 6)

/* ---------- error helpers ---------- */

static const char *errno_name(int e) {
  switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(EAGAIN)
    E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(ENODEV) E(ENOTDIR) E(EINVAL)
    E(ENFILE) E(EMFILE) E(ENOTTY) E(ENOSPC) E(ERANGE) E(ENOSYS) E(EOPNOTSUPP)
#undef E
    default: return "EUNKNOWN";
  }
}

static napi_value throw_errno(napi_env env, const char *syscall_name, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s failed: %s (%s)", syscall_name, errno_name(err), strerror(err));
  napi_value code, message, error, sc, en;
  napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, error, "syscall", sc);
  napi_create_int32(env, err, &en);
  napi_set_named_property(env, error, "errno", en);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_GV_NATIVE_ARG", msg);
  return NULL;
}

/* ---------- argument helpers ---------- */

#define MAX_ARGS 8
#define ARGS(n)                                                                \
  size_t argc = MAX_ARGS;                                                      \
  napi_value argv[MAX_ARGS];                                                   \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL; \
  if (argc < (n)) return throw_type(env, "too few arguments")

static int arg_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

static int arg_u64(napi_env env, napi_value v, uint64_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    return napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless;
  }
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

/* A Buffer / TypedArray / ArrayBuffer's bytes. */
static int arg_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  napi_is_typedarray(env, v, &is);
  if (is) {
    napi_typedarray_type type;
    size_t length, offset;
    napi_value ab;
    if (napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) != napi_ok) return 0;
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    *len = length * elem;
    return 1;
  }
  napi_is_arraybuffer(env, v, &is);
  if (is) return napi_get_arraybuffer_info(env, v, data, len) == napi_ok;
  return 0;
}

static napi_value ret_i32(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static napi_value ret_u64(napi_env env, uint64_t v) {
  napi_value r;
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

/* ---------- mapping table: the only state besides fds ---------- */

struct mapping {
  uintptr_t addr;
  size_t len;
};
#define MAX_MAPPINGS 1024
static struct mapping g_maps[MAX_MAPPINGS];
static pthread_mutex_t g_maps_lock = PTHREAD_MUTEX_INITIALIZER;

static int maps_add(uintptr_t addr, size_t len) {
  int ok = 0;
  pthread_mutex_lock(&g_maps_lock);
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    if (g_maps[i].len == 0) {
      g_maps[i].addr = addr;
      g_maps[i].len = len;
      ok = 1;
      break;
    }
  }
  pthread_mutex_unlock(&g_maps_lock);
  return ok;
}

/* Exact match removal; returns 1 if found. */
static int maps_remove(uintptr_t addr, size_t len) {
  int found = 0;
  pthread_mutex_lock(&g_maps_lock);
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    if (g_maps[i].len && g_maps[i].addr == addr && g_maps[i].len == len) {
      g_maps[i].len = 0;
      found = 1;
      break;
    }
  }
  pthread_mutex_unlock(&g_maps_lock);
  return found;
}

/* Is [addr, addr+len) inside one mapping this addon created? */
static int maps_contains(uintptr_t addr, size_t len) {
  int ok = 0;
  pthread_mutex_lock(&g_maps_lock);
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    struct mapping *m = &g_maps[i];
    if (m->len && addr >= m->addr && len <= m->len && addr - m->addr <= m->len - len) {
      ok = 1;
      break;
    }
  }
  pthread_mutex_unlock(&g_maps_lock);
  return ok;
}

/* ---------- files ---------- */

static napi_value Open(napi_env env, napi_callback_info info) {
  ARGS(1);
  char path[4096];
  size_t n;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &n) != napi_ok || n >= sizeof path - 1)
    return throw_type(env, "open: path must be a string");
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, "open", errno);
  return ret_i32(env, fd);
}

static napi_value Close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "close: fd");
  if (close(fd) < 0) return throw_errno(env, "close", errno);
  return NULL;
}

/* ---------- ioctls with an integer argument ---------- */

/*
 * ioctl, again while a signal interrupts it (a profiler's SIGPROF, say): only
 * KVM_RUN reports EINTR to its caller, where it means a kick.
 */
static int xioctl(int fd, unsigned long req, void *arg) {
  int r;
  do {
    r = ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

static napi_value ioctl_int(napi_env env, napi_callback_info info, unsigned long req, const char *name) {
  ARGS(1);
  int32_t fd;
  uint64_t arg = 0;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an int32");
  if (argc > 1 && !arg_u64(env, argv[1], &arg)) return throw_type(env, "arg must be a non-negative integer");
  int r = xioctl(fd, req, (void *)(uintptr_t)arg);
  if (r < 0) return throw_errno(env, name, errno);
  return ret_i32(env, r);
}

#define IOCTL_INT(fn, req) \
  static napi_value fn(napi_env env, napi_callback_info info) { return ioctl_int(env, info, req, #req); }

IOCTL_INT(GetApiVersion, KVM_GET_API_VERSION)
IOCTL_INT(CheckExtension, KVM_CHECK_EXTENSION)
IOCTL_INT(CreateVm, KVM_CREATE_VM)
IOCTL_INT(GetVcpuMmapSize, KVM_GET_VCPU_MMAP_SIZE)
IOCTL_INT(CreateVcpu, KVM_CREATE_VCPU)
IOCTL_INT(GetTscKhz, KVM_GET_TSC_KHZ)
IOCTL_INT(CreateIrqchip, KVM_CREATE_IRQCHIP)
IOCTL_INT(SetTssAddr, KVM_SET_TSS_ADDR)

/* ---------- ioctls with a fixed-size struct in a caller's buffer ---------- */

static napi_value ioctl_buf(napi_env env, napi_callback_info info, unsigned long req, const char *name,
                            size_t size, int exact) {
  ARGS(2);
  int32_t fd;
  void *data;
  size_t len;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an int32");
  if (!arg_bytes(env, argv[1], &data, &len)) return throw_type(env, "expected a Buffer or TypedArray");
  if (exact ? len != size : len < size) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: buffer of %zu bytes, expected %zu", name, len, size);
    return throw_type(env, msg);
  }
  int r = xioctl(fd, req, data);
  if (r < 0) return throw_errno(env, name, errno);
  return ret_i32(env, r);
}

#define IOCTL_BUF(fn, req, type) \
  static napi_value fn(napi_env env, napi_callback_info info) { return ioctl_buf(env, info, req, #req, sizeof(type), 1); }

IOCTL_BUF(GetRegs, KVM_GET_REGS, struct kvm_regs)
IOCTL_BUF(SetRegs, KVM_SET_REGS, struct kvm_regs)
IOCTL_BUF(GetSregs, KVM_GET_SREGS, struct kvm_sregs)
IOCTL_BUF(SetSregs, KVM_SET_SREGS, struct kvm_sregs)
IOCTL_BUF(GetVcpuEvents, KVM_GET_VCPU_EVENTS, struct kvm_vcpu_events)
IOCTL_BUF(SetVcpuEvents, KVM_SET_VCPU_EVENTS, struct kvm_vcpu_events)
IOCTL_BUF(SetGuestDebug, KVM_SET_GUEST_DEBUG, struct kvm_guest_debug)
IOCTL_BUF(EnableCap, KVM_ENABLE_CAP, struct kvm_enable_cap)
IOCTL_BUF(CreatePit2, KVM_CREATE_PIT2, struct kvm_pit_config)
IOCTL_BUF(SetIdentityMapAddr, KVM_SET_IDENTITY_MAP_ADDR, __u64)

/* irqLine(vmFd, irq, level): KVM_IRQ_LINE, a line of the in-kernel interrupt controllers. */
static napi_value IrqLine(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, irq, level;
  if (!arg_i32(env, argv[0], &fd) || !arg_i32(env, argv[1], &irq) || !arg_i32(env, argv[2], &level) || irq < 0)
    return throw_type(env, "irqLine(fd, irq, level)");
  struct kvm_irq_level l = {.irq = (uint32_t)irq, .level = (uint32_t)(level ? 1 : 0)};
  if (xioctl(fd, KVM_IRQ_LINE, &l) < 0) return throw_errno(env, "KVM_IRQ_LINE", errno);
  return NULL;
}

/* Variable-length structs: the header says how many entries follow; check the buffer holds them. */
static napi_value ioctl_var(napi_env env, napi_callback_info info, unsigned long req, const char *name,
                            size_t hdr, size_t entry) {
  ARGS(2);
  int32_t fd;
  void *data;
  size_t len;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an int32");
  if (!arg_bytes(env, argv[1], &data, &len) || len < hdr) return throw_type(env, "buffer too small");
  uint32_t n;
  memcpy(&n, data, sizeof n); /* nmsrs / nent is the first u32 of both structs */
  if (n > (len - hdr) / entry) return throw_type(env, "entry count exceeds the buffer");
  int r = xioctl(fd, req, data);
  if (r < 0) return throw_errno(env, name, errno);
  return ret_i32(env, r);
}

static napi_value SetMsrs(napi_env env, napi_callback_info info) {
  return ioctl_var(env, info, KVM_SET_MSRS, "KVM_SET_MSRS", sizeof(struct kvm_msrs), sizeof(struct kvm_msr_entry));
}
static napi_value GetSupportedCpuid(napi_env env, napi_callback_info info) {
  return ioctl_var(env, info, KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", sizeof(struct kvm_cpuid2),
                   sizeof(struct kvm_cpuid_entry2));
}
static napi_value SetCpuid2(napi_env env, napi_callback_info info) {
  return ioctl_var(env, info, KVM_SET_CPUID2, "KVM_SET_CPUID2", sizeof(struct kvm_cpuid2),
                   sizeof(struct kvm_cpuid_entry2));
}

/* setUserMemoryRegion(vmFd, slot, flags, guestPhysAddr, memorySize, userspaceAddr) */
static napi_value SetUserMemoryRegion(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t fd, slot, flags;
  uint64_t gpa, size, uaddr;
  if (!arg_i32(env, argv[0], &fd) || !arg_i32(env, argv[1], &slot) || !arg_i32(env, argv[2], &flags) ||
      !arg_u64(env, argv[3], &gpa) || !arg_u64(env, argv[4], &size) || !arg_u64(env, argv[5], &uaddr))
    return throw_type(env, "setUserMemoryRegion(fd, slot, flags, gpa, size, addr)");
  /* Only memory this addon mapped may back a slot (size 0 deletes a slot). */
  if (size && !maps_contains((uintptr_t)uaddr, (size_t)size))
    return throw_type(env, "setUserMemoryRegion: host range is not inside a Guardvisor mapping");
  struct kvm_userspace_memory_region r = {
      .slot = (uint32_t)slot, .flags = (uint32_t)flags, .guest_phys_addr = gpa, .memory_size = size,
      .userspace_addr = uaddr};
  if (xioctl(fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) return throw_errno(env, "KVM_SET_USER_MEMORY_REGION", errno);
  return NULL;
}

/*
 * setMsrFilter(vmFd, defaultDeny, ranges) where ranges is an array of
 * { flags, base, nmsrs, bitmap: Buffer } (at most KVM_MSR_FILTER_MAX_RANGES).
 */
static napi_value SetMsrFilter(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd, deny;
  if (!arg_i32(env, argv[0], &fd) || !arg_i32(env, argv[1], &deny)) return throw_type(env, "setMsrFilter(fd, deny, ranges)");
  bool is_array;
  napi_is_array(env, argv[2], &is_array);
  if (!is_array) return throw_type(env, "setMsrFilter: ranges must be an array");
  uint32_t n;
  napi_get_array_length(env, argv[2], &n);
  if (n > KVM_MSR_FILTER_MAX_RANGES) return throw_type(env, "setMsrFilter: too many ranges");
  struct kvm_msr_filter f;
  memset(&f, 0, sizeof f);
  f.flags = deny ? KVM_MSR_FILTER_DEFAULT_DENY : KVM_MSR_FILTER_DEFAULT_ALLOW;
  for (uint32_t i = 0; i < n; i++) {
    napi_value r, v;
    napi_get_element(env, argv[2], i, &r);
    int32_t flags, base, nmsrs;
    void *bm;
    size_t bmlen;
    napi_get_named_property(env, r, "flags", &v);
    if (!arg_i32(env, v, &flags)) return throw_type(env, "range.flags");
    napi_get_named_property(env, r, "base", &v);
    if (!arg_i32(env, v, &base)) return throw_type(env, "range.base");
    napi_get_named_property(env, r, "nmsrs", &v);
    if (!arg_i32(env, v, &nmsrs) || nmsrs <= 0) return throw_type(env, "range.nmsrs");
    napi_get_named_property(env, r, "bitmap", &v);
    if (!arg_bytes(env, v, &bm, &bmlen) || bmlen * 8 < (size_t)nmsrs) return throw_type(env, "range.bitmap too small");
    f.ranges[i].flags = (uint32_t)flags;
    f.ranges[i].base = (uint32_t)base;
    f.ranges[i].nmsrs = (uint32_t)nmsrs;
    f.ranges[i].bitmap = bm; /* KVM copies the bitmap during the ioctl */
  }
  if (xioctl(fd, KVM_X86_SET_MSR_FILTER, &f) < 0) return throw_errno(env, "KVM_X86_SET_MSR_FILTER", errno);
  return NULL;
}

static void take_kicks(void);

/*
 * run(vcpuFd): KVM_RUN. Returns 0 when the vCPU exited (read the exit from the
 * mapped kvm_run), or -EINTR / -EAGAIN when it was kicked or interrupted.
 */
static napi_value Run(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "run(fd)");
  if (ioctl(fd, KVM_RUN, 0) < 0) {
    int e = errno;
    if (e == EINTR) take_kicks();
    if (e == EINTR || e == EAGAIN) return ret_i32(env, -e);
    return throw_errno(env, "KVM_RUN", e);
  }
  return ret_i32(env, 0);
}

/* ---------- memory ---------- */

/* mmapAnonymous(size) -> bigint address of a zeroed MAP_SHARED mapping. */
static napi_value MmapAnonymous(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint64_t size;
  if (!arg_u64(env, argv[0], &size) || size == 0 || size % 4096) return throw_type(env, "mmapAnonymous: size must be a positive multiple of 4096");
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  if (!maps_add((uintptr_t)p, size)) {
    munmap(p, size);
    return throw_errno(env, "mmap", ENOMEM);
  }
  return ret_u64(env, (uintptr_t)p);
}

/* mmapFd(fd, size) -> bigint address of a MAP_SHARED mapping of fd at offset 0 (kvm_run). */
static napi_value MmapFd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t fd;
  uint64_t size;
  if (!arg_i32(env, argv[0], &fd) || !arg_u64(env, argv[1], &size) || size == 0) return throw_type(env, "mmapFd(fd, size)");
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  if (!maps_add((uintptr_t)p, size)) {
    munmap(p, size);
    return throw_errno(env, "mmap", ENOMEM);
  }
  return ret_u64(env, (uintptr_t)p);
}

/* munmap(addr, size): only an exact mapping this addon created. */
static napi_value Munmap(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint64_t addr, size;
  if (!arg_u64(env, argv[0], &addr) || !arg_u64(env, argv[1], &size)) return throw_type(env, "munmap(addr, size)");
  if (!maps_remove((uintptr_t)addr, size)) return throw_type(env, "munmap: not a Guardvisor mapping");
  if (munmap((void *)(uintptr_t)addr, size) < 0) return throw_errno(env, "munmap", errno);
  return NULL;
}

/*
 * arrayBufferAt(addr, size): an ArrayBuffer aliasing [addr, addr+size) of a
 * mapping this addon created, usable on any thread without copies. The
 * mapping must outlive every ArrayBuffer made from it (the TS layer ensures it).
 */
static napi_value ArrayBufferAt(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint64_t addr, size;
  if (!arg_u64(env, argv[0], &addr) || !arg_u64(env, argv[1], &size)) return throw_type(env, "arrayBufferAt(addr, size)");
  if (!maps_contains((uintptr_t)addr, size)) return throw_type(env, "arrayBufferAt: range is not inside a Guardvisor mapping");
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, size, NULL, NULL, &ab);
  if (s != napi_ok) return throw_type(env, "arrayBufferAt: external buffers are not supported by this runtime");
  return ab;
}

/* ---------- threads ---------- */

static void kick_handler(int sig) { (void)sig; }

/* The set holding only the kick signal. */
static sigset_t kick_set(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, GV_KICK_SIGNAL);
  return set;
}

static pthread_once_t g_sig_once = PTHREAD_ONCE_INIT;
static void install_kick_handler(void) {
  /* Never runs on a vCPU thread (the signal is blocked there outside KVM_RUN);
   * it is installed so the signal is neither ignored nor fatal. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
  sigaction(GV_KICK_SIGNAL, &sa, NULL);
}

/*
 * prepareVcpuThread(vcpuFd) -> the calling thread's Linux tid.
 * The kick signal stays blocked in this thread except while it is inside
 * KVM_RUN on vcpuFd (KVM_SET_SIGNAL_MASK): a kick ends the KVM_RUN in progress,
 * or the next one at once, with EINTR, and no signal handler ever runs on the
 * thread. run() takes the pending kick after such an exit.
 */
static napi_value PrepareVcpuThread(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (!arg_i32(env, argv[0], &fd)) return throw_type(env, "prepareVcpuThread(vcpuFd)");
  pthread_once(&g_sig_once, install_kick_handler);
  sigset_t kick = kick_set(), during_run;
  int e = pthread_sigmask(SIG_BLOCK, &kick, &during_run);
  if (e != 0) return throw_errno(env, "pthread_sigmask", e);
  sigdelset(&during_run, GV_KICK_SIGNAL);
  /* The kernel's sigset is the first 8 bytes of glibc's (bit n-1 = signal n). */
  uint64_t buf[2] = {0, 0};
  struct kvm_signal_mask *m = (struct kvm_signal_mask *)buf;
  m->len = 8;
  memcpy(m->sigset, &during_run, 8);
  if (xioctl(fd, KVM_SET_SIGNAL_MASK, m) < 0) return throw_errno(env, "KVM_SET_SIGNAL_MASK", errno);
  return ret_i32(env, (int32_t)syscall(SYS_gettid));
}

/* Take every kick pending for this thread (after KVM_RUN returned EINTR). */
static void take_kicks(void) {
  sigset_t kick = kick_set();
  struct timespec now = {0, 0};
  while (sigtimedwait(&kick, NULL, &now) == GV_KICK_SIGNAL) {
  }
}

/* kickThread(tid): interrupt a KVM_RUN in that thread of this process. ESRCH is not an error. */
static napi_value KickThread(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t tid;
  if (!arg_i32(env, argv[0], &tid) || tid <= 0) return throw_type(env, "kickThread(tid)");
  if (syscall(SYS_tgkill, getpid(), tid, GV_KICK_SIGNAL) < 0 && errno != ESRCH) return throw_errno(env, "tgkill", errno);
  return NULL;
}

/* ---------- constants and layouts ---------- */

static void set_num(napi_env env, napi_value obj, const char *name, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, name, n);
}

static napi_value new_layout(napi_env env, napi_value parent, const char *name, size_t size) {
  napi_value o;
  napi_create_object(env, &o);
  set_num(env, o, "$size", (double)size);
  napi_set_named_property(env, parent, name, o);
  return o;
}

#define LAYOUT(obj, type) napi_value L_##obj = new_layout(env, layouts, #obj, sizeof(type))
#define OFF(obj, type, fieldname, member) set_num(env, L_##obj, fieldname, (double)offsetof(type, member))

static napi_value make_layouts(napi_env env) {
  napi_value layouts;
  napi_create_object(env, &layouts);

  LAYOUT(kvm_run, struct kvm_run);
  OFF(kvm_run, struct kvm_run, "immediate_exit", immediate_exit);
  OFF(kvm_run, struct kvm_run, "exit_reason", exit_reason);
  OFF(kvm_run, struct kvm_run, "flags", flags);
  OFF(kvm_run, struct kvm_run, "io.direction", io.direction);
  OFF(kvm_run, struct kvm_run, "io.size", io.size);
  OFF(kvm_run, struct kvm_run, "io.port", io.port);
  OFF(kvm_run, struct kvm_run, "io.count", io.count);
  OFF(kvm_run, struct kvm_run, "io.data_offset", io.data_offset);
  OFF(kvm_run, struct kvm_run, "mmio.phys_addr", mmio.phys_addr);
  OFF(kvm_run, struct kvm_run, "mmio.data", mmio.data);
  OFF(kvm_run, struct kvm_run, "mmio.len", mmio.len);
  OFF(kvm_run, struct kvm_run, "mmio.is_write", mmio.is_write);
  OFF(kvm_run, struct kvm_run, "debug.exception", debug.arch.exception);
  OFF(kvm_run, struct kvm_run, "debug.pc", debug.arch.pc);
  OFF(kvm_run, struct kvm_run, "debug.dr6", debug.arch.dr6);
  OFF(kvm_run, struct kvm_run, "debug.dr7", debug.arch.dr7);
  OFF(kvm_run, struct kvm_run, "internal.suberror", internal.suberror);
  OFF(kvm_run, struct kvm_run, "internal.ndata", internal.ndata);
  OFF(kvm_run, struct kvm_run, "internal.data", internal.data);
  OFF(kvm_run, struct kvm_run, "fail_entry.reason", fail_entry.hardware_entry_failure_reason);
  OFF(kvm_run, struct kvm_run, "msr.error", msr.error);
  OFF(kvm_run, struct kvm_run, "msr.reason", msr.reason);
  OFF(kvm_run, struct kvm_run, "msr.index", msr.index);
  OFF(kvm_run, struct kvm_run, "msr.data", msr.data);
  OFF(kvm_run, struct kvm_run, "system_event.type", system_event.type);
  OFF(kvm_run, struct kvm_run, "hypercall.nr", hypercall.nr);
  OFF(kvm_run, struct kvm_run, "kvm_valid_regs", kvm_valid_regs);
  OFF(kvm_run, struct kvm_run, "kvm_dirty_regs", kvm_dirty_regs);
  OFF(kvm_run, struct kvm_run, "s.regs", s.regs.regs);
  OFF(kvm_run, struct kvm_run, "s.sregs", s.regs.sregs);
  OFF(kvm_run, struct kvm_run, "s.events", s.regs.events);

  LAYOUT(kvm_regs, struct kvm_regs);
#define R(x) OFF(kvm_regs, struct kvm_regs, #x, x)
  R(rax); R(rbx); R(rcx); R(rdx); R(rsi); R(rdi); R(rsp); R(rbp);
  R(r8); R(r9); R(r10); R(r11); R(r12); R(r13); R(r14); R(r15); R(rip); R(rflags);
#undef R

  LAYOUT(kvm_segment, struct kvm_segment);
#define S(x) OFF(kvm_segment, struct kvm_segment, #x, x)
  S(base); S(limit); S(selector); S(type); S(present); S(dpl); S(db); S(s); S(l); S(g); S(avl); S(unusable);
#undef S

  LAYOUT(kvm_dtable, struct kvm_dtable);
  OFF(kvm_dtable, struct kvm_dtable, "base", base);
  OFF(kvm_dtable, struct kvm_dtable, "limit", limit);

  LAYOUT(kvm_sregs, struct kvm_sregs);
#define S(x) OFF(kvm_sregs, struct kvm_sregs, #x, x)
  S(cs); S(ds); S(es); S(fs); S(gs); S(ss); S(tr); S(ldt); S(gdt); S(idt);
  S(cr0); S(cr2); S(cr3); S(cr4); S(cr8); S(efer); S(apic_base);
#undef S

  LAYOUT(kvm_vcpu_events, struct kvm_vcpu_events);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception.injected", exception.injected);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception.nr", exception.nr);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception.has_error_code", exception.has_error_code);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception.pending", exception.pending);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception.error_code", exception.error_code);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "flags", flags);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception_has_payload", exception_has_payload);
  OFF(kvm_vcpu_events, struct kvm_vcpu_events, "exception_payload", exception_payload);

  LAYOUT(kvm_guest_debug, struct kvm_guest_debug);
  OFF(kvm_guest_debug, struct kvm_guest_debug, "control", control);
  OFF(kvm_guest_debug, struct kvm_guest_debug, "debugreg", arch.debugreg);

  LAYOUT(kvm_enable_cap, struct kvm_enable_cap);
  OFF(kvm_enable_cap, struct kvm_enable_cap, "cap", cap);
  OFF(kvm_enable_cap, struct kvm_enable_cap, "flags", flags);
  OFF(kvm_enable_cap, struct kvm_enable_cap, "args", args);

  LAYOUT(kvm_msrs, struct kvm_msrs);
  OFF(kvm_msrs, struct kvm_msrs, "nmsrs", nmsrs);
  OFF(kvm_msrs, struct kvm_msrs, "entries", entries);
  LAYOUT(kvm_msr_entry, struct kvm_msr_entry);
  OFF(kvm_msr_entry, struct kvm_msr_entry, "index", index);
  OFF(kvm_msr_entry, struct kvm_msr_entry, "data", data);

  LAYOUT(kvm_cpuid2, struct kvm_cpuid2);
  OFF(kvm_cpuid2, struct kvm_cpuid2, "nent", nent);
  OFF(kvm_cpuid2, struct kvm_cpuid2, "entries", entries);
  LAYOUT(kvm_cpuid_entry2, struct kvm_cpuid_entry2);
#define C(x) OFF(kvm_cpuid_entry2, struct kvm_cpuid_entry2, #x, x)
  C(function); C(index); C(flags); C(eax); C(ebx); C(ecx); C(edx);
#undef C

  LAYOUT(kvm_pit_config, struct kvm_pit_config);
  OFF(kvm_pit_config, struct kvm_pit_config, "flags", flags);

  return layouts;
}

static napi_value make_constants(napi_env env) {
  napi_value c;
  napi_create_object(env, &c);
#define K(x) set_num(env, c, #x, (double)(x))
  K(KVM_API_VERSION);
  K(KVM_EXIT_UNKNOWN); K(KVM_EXIT_EXCEPTION); K(KVM_EXIT_IO); K(KVM_EXIT_HYPERCALL); K(KVM_EXIT_DEBUG);
  K(KVM_EXIT_HLT); K(KVM_EXIT_MMIO); K(KVM_EXIT_SHUTDOWN); K(KVM_EXIT_FAIL_ENTRY); K(KVM_EXIT_INTR);
  K(KVM_EXIT_INTERNAL_ERROR); K(KVM_EXIT_SYSTEM_EVENT); K(KVM_EXIT_X86_RDMSR); K(KVM_EXIT_X86_WRMSR);
  K(KVM_EXIT_IO_IN); K(KVM_EXIT_IO_OUT);
  K(KVM_MEM_READONLY); K(KVM_MEM_LOG_DIRTY_PAGES);
  K(KVM_CAP_USER_MEMORY); K(KVM_CAP_READONLY_MEM); K(KVM_CAP_SET_GUEST_DEBUG); K(KVM_CAP_VCPU_EVENTS);
  K(KVM_CAP_IMMEDIATE_EXIT); K(KVM_CAP_SYNC_REGS); K(KVM_CAP_X86_USER_SPACE_MSR); K(KVM_CAP_X86_MSR_FILTER);
  K(KVM_CAP_NR_MEMSLOTS); K(KVM_CAP_EXT_CPUID); K(KVM_CAP_NR_VCPUS);
  K(KVM_CAP_IRQCHIP); K(KVM_CAP_PIT2); K(KVM_CAP_SET_TSS_ADDR); K(KVM_CAP_SET_IDENTITY_MAP_ADDR);
  K(KVM_CAP_TSC_DEADLINE_TIMER); K(KVM_PIT_SPEAKER_DUMMY); K(KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
  K(KVM_SYNC_X86_REGS); K(KVM_SYNC_X86_SREGS); K(KVM_SYNC_X86_EVENTS);
  K(KVM_GUESTDBG_ENABLE); K(KVM_GUESTDBG_SINGLESTEP); K(KVM_GUESTDBG_USE_HW_BP); K(KVM_GUESTDBG_USE_SW_BP);
  K(KVM_MSR_FILTER_READ); K(KVM_MSR_FILTER_WRITE); K(KVM_MSR_FILTER_MAX_RANGES);
  K(KVM_MSR_EXIT_REASON_INVAL); K(KVM_MSR_EXIT_REASON_UNKNOWN); K(KVM_MSR_EXIT_REASON_FILTER);
  K(KVM_VCPUEVENT_VALID_NMI_PENDING); K(KVM_VCPUEVENT_VALID_SIPI_VECTOR); K(KVM_VCPUEVENT_VALID_SHADOW);
  K(EINTR); K(EAGAIN);
#undef K
  return c;
}

/* ---------- module ---------- */

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
      FN("open", Open),
      FN("close", Close),
      FN("getApiVersion", GetApiVersion),
      FN("checkExtension", CheckExtension),
      FN("createVm", CreateVm),
      FN("getVcpuMmapSize", GetVcpuMmapSize),
      FN("getSupportedCpuid", GetSupportedCpuid),
      FN("createVcpu", CreateVcpu),
      FN("getTscKhz", GetTscKhz),
      FN("setUserMemoryRegion", SetUserMemoryRegion),
      FN("enableCap", EnableCap),
      FN("setMsrFilter", SetMsrFilter),
      FN("createIrqchip", CreateIrqchip),
      FN("createPit2", CreatePit2),
      FN("setTssAddr", SetTssAddr),
      FN("setIdentityMapAddr", SetIdentityMapAddr),
      FN("irqLine", IrqLine),
      FN("run", Run),
      FN("getRegs", GetRegs),
      FN("setRegs", SetRegs),
      FN("getSregs", GetSregs),
      FN("setSregs", SetSregs),
      FN("setMsrs", SetMsrs),
      FN("getVcpuEvents", GetVcpuEvents),
      FN("setVcpuEvents", SetVcpuEvents),
      FN("setGuestDebug", SetGuestDebug),
      FN("setCpuid2", SetCpuid2),
      FN("mmapAnonymous", MmapAnonymous),
      FN("mmapFd", MmapFd),
      FN("munmap", Munmap),
      FN("arrayBufferAt", ArrayBufferAt),
      FN("prepareVcpuThread", PrepareVcpuThread),
      FN("kickThread", KickThread),
  };
  if (napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) != napi_ok) return NULL;
  napi_set_named_property(env, exports, "constants", make_constants(env));
  napi_set_named_property(env, exports, "layouts", make_layouts(env));
  return exports;
}

NAPI_MODULE_INIT() { return Init(env, exports); }
