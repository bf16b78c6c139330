// Kiln's CUDA prelude: every helper that generated CUDA C calls (backends/cuda/codegen.py).
//
// The printed kernels compute exactly what the kernel-IR interpreter (ir/loop/interpreter.py)
// computes; where plain C would differ (NaN-propagating max/min, integer division by zero,
// float-to-integer casts out of range, low-precision rounding after every operation) they call
// a helper here instead. The rules mirror backends/llvm/intrinsics.py, the CPU backend's twin.
//
// Representations: f32/f64 live as float/double. f16 and bf16 are stored as __half and
// __nv_bfloat16 but live in registers as a float that holds a value representable in the low
// type: loads widen exactly, arithmetic happens in float and is rounded back after every
// operation (kiln_round_f16/bf16), stores narrow exactly. bool is one byte 0/1 in memory.
//
// Two implementations: under NVRTC (`__CUDACC_RTC__`) the CUDA headers; under a host C++ compiler
// (the emulator, runtime/cuda_emulator.py) the section below supplies the same CUDA intrinsics
// and the thread model with the device's semantics, so the helpers after it are one text for
// both and the same generated source runs on the CPU. A helper that needs device-only code
// (inline PTX) keeps a host twin in that section.

#pragma once

#ifdef __CUDACC_RTC__
// NVRTC has no C library headers: the fixed-width integers the printed code uses.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
// -- the host implementation (issue 9) -------------------------------------------------------
//
// g++ -std=c++20 -pthread compiles the same generated source for the CPU (runtime/cuda_emulator.py
// adds a launcher per kernel). This section supplies the part of CUDA that the printed kernels and
// the device helpers below use, with the device's semantics, so that those helpers are the same
// text on both sides: the 16-bit float types and their conversions (round to nearest even, NaN as
// the device's canonical 0x7FFF, bit-exact with cvt.rn), the saturating _rz conversions, the bit
// casts, atomics, dynamic shared memory, and the thread model. A block's threads are OS threads
// that run concurrently (fibers on one OS thread where KILN_EMU_FIBERS is 1: the plain mode);
// blocks run one after another, so a function-static array serves as the block's `__shared__`
// memory (and launches are serialised). `__syncthreads` and the warp shuffles are counting
// barriers on one mutex per block, and a barrier that not every thread reaches is reported as a
// deadlock instead of hanging (see `kiln_emu::wait`). ThreadSanitizer sees none of that mutex:
// only the block-wide barriers order memory for it, each by an explicit release and acquire, so
// a shuffle orders no memory, as on the device (see `kiln_emu::Unseen`).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#if KILN_EMU_FIBERS
#include <sys/mman.h>
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block at a time: a function-static array is the block's shared memory

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct __half { uint16_t kiln_bits; };
struct __nv_bfloat16 { uint16_t kiln_bits; };

// -- bit casts and conversions (the CUDA intrinsics the helpers below call) --------------------

static inline uint32_t __float_as_uint(float x) { uint32_t b; std::memcpy(&b, &x, 4); return b; }
static inline float __uint_as_float(uint32_t b) { float x; std::memcpy(&x, &b, 4); return x; }
static inline double __longlong_as_double(long long b) { double x; std::memcpy(&x, &b, 8); return x; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.kiln_bits; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
static inline __half __ushort_as_half(unsigned short b) { return __half{b}; }

// Exact: every f16 is a float (subnormals included); a NaN keeps its payload, as cvt.f32.f16.
static inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.kiln_bits & 0x8000u) << 16, exponent = (h.kiln_bits >> 10) & 0x1Fu;
  const uint32_t mantissa = h.kiln_bits & 0x3FFu;
  if (exponent == 0x1F) return __uint_as_float(sign | 0x7F800000u | (mantissa << 13));
  const float magnitude = exponent == 0 ? ldexpf((float)mantissa, -24) : ldexpf((float)(mantissa | 0x400u), (int)exponent - 25);
  return sign ? -magnitude : magnitude;
}

// One rounding to nearest even from double (a float is exact in double, so this also serves
// float -> f16); NaN -> 0x7FFF, the device's canonical NaN.
static inline __half __double2half(double x) {
  if (x != x) return __half{0x7FFF};
  const uint16_t sign = signbit(x) ? 0x8000 : 0;
  const double a = fabs(x);
  if (a >= 65520.0) return __half{(uint16_t)(sign | 0x7C00)};  // past the tie above 65504: infinity
  if (a < 0x1p-14) return __half{(uint16_t)(sign | (uint16_t)nearbyint(a * 0x1p24))};  // subnormals: multiples of 2^-24
  int e;
  const double m = frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): 11 significant bits are m * 2^11
  const uint32_t significand = (uint32_t)nearbyint(ldexp(m, 11));  // 2048 carries into the exponent
  return __half{(uint16_t)(sign | ((uint32_t)(e + 14) << 10) + (significand - 1024))};
}
static inline __half __float2half_rn(float x) { return __double2half((double)x); }

// Truncation towards zero saturating at I's bounds, NaN -> 0: what cvt.rzi does on the device.
template <typename I, typename F> static inline I kiln_host_truncate(F x) {
  const F above = (F)((double)std::numeric_limits<I>::max() + 1.0);  // 2^31, 2^32 or 2^63: exact
  if (x != x) return 0;
  if (x >= above) return std::numeric_limits<I>::max();
  if (x <= (F)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
  return (I)x;
}
static inline long long __float2ll_rz(float x) { return kiln_host_truncate<long long>(x); }
static inline long long __double2ll_rz(double x) { return kiln_host_truncate<long long>(x); }
static inline int __float2int_rz(float x) { return kiln_host_truncate<int>(x); }
static inline int __double2int_rz(double x) { return kiln_host_truncate<int>(x); }
static inline unsigned __float2uint_rz(float x) { return kiln_host_truncate<unsigned>(x); }
static inline unsigned __double2uint_rz(double x) { return kiln_host_truncate<unsigned>(x); }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }

// -- the thread model --------------------------------------------------------------------------

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace kiln_emu {

struct Abort {};  // thrown in every thread of a failed block: unwinds it to the launcher

struct Warp {
  int lanes, arrived = 0;
  uint64_t generation = 0;
  uint64_t slots[32];  // the value each lane offers to a shuffle
  float fragments[32][16];  // the registers each lane offers to a whole-fragment exchange (MMA)
  std::condition_variable wake;
};

// One running block: its barriers and how many threads wait in them or have finished.
struct Block {
  const char* kernel;
  int threads, arrived = 0, waiting_block = 0, waiting_warp = 0, finished = 0;
  uint64_t generation = 0, block_generation = 0;
  uint3 index{0, 0, 0};
  std::chrono::duration<double> timeout;
  std::mutex mutex;
  std::condition_variable wake, next_block;
  std::vector<std::unique_ptr<Warp>> warps;
  std::string failure;  // non-empty: the launch failed, every thread unwinds
  unsigned char* dynamic_shared = nullptr;  // the launch's dynamic shared memory (`extern __shared__`)
  char clocks[2];  // race mode: the block-wide barriers' sync addresses, alternately (see `arrive`)
};

inline thread_local Block* block = nullptr;
inline thread_local int lane = 0, warp = 0;

// -- what ThreadSanitizer sees (race mode) --
// On the device only barriers order memory; __shfl_sync exchanges registers and orders nothing.
// The thread model's mutex and condition variables would order, for TSan, memory among every
// thread that takes them: a shuffle, or a thread that wakes late from one barrier after another
// has reached the next (its accesses since would look ordered). So the thread model runs `Unseen`
// (its synchronisation and its own memory accesses, the block's counters and a shuffle's exchange
// slots, invisible to TSan), and a block-wide barrier (`__syncthreads`, the end of a block) says
// what it orders itself: each thread releases the barrier's sync address before it arrives and
// acquires it after it leaves. Two addresses, alternately, suffice: a thread leaving barrier n
// has every release of n, and none of n + 2 can exist yet (that needs every thread past n + 1).
#if defined(__SANITIZE_THREAD__)
extern "C" {
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
}
struct Unseen {  // a scope whose synchronisation and memory accesses TSan ignores (nests)
  Unseen() {
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~Unseen() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  }
  Unseen(const Unseen&) = delete;
  Unseen& operator=(const Unseen&) = delete;
};
inline thread_local uint64_t barriers_passed = 0;  // block-wide barriers this OS thread has left
inline void arrive(Block& b) { __tsan_release(&b.clocks[barriers_passed % 2]); }
inline void leave(Block& b) { __tsan_acquire(&b.clocks[barriers_passed++ % 2]); }
#else
struct Unseen {
  Unseen() {}  // user-provided: no unused-variable warning where it is a no-op
};
inline void arrive(Block&) {}
inline void leave(Block&) {}
#endif

#if KILN_EMU_FIBERS
// Plain mode's threads of a block are user-level fibers on the launching OS thread (ucontext),
// measured faster than OS threads for the model tests (runtime/cuda_emulator.py gives the numbers):
// a fiber that waits at a barrier switches to the scheduler (`run_fibers`), which resumes the next
// fiber round-robin; the thread_locals above then describe the fiber that runs. The sanitizer
// builds keep OS threads: ThreadSanitizer needs real threads, and ASan's stack checks want them.
struct Fiber {
  ucontext_t context;
  uint3 thread;
  int lane, warp;
  bool done;
};
inline thread_local ucontext_t scheduler;
inline thread_local Fiber* fiber = nullptr;
inline thread_local void (*fiber_body)(void**) = nullptr;
inline thread_local void** fiber_args = nullptr;
#endif

inline void fail(Block& b, const std::string& why) {
  Unseen unseen;  // the block's bookkeeping (also from kiln_tiles::fault, outside the thread model)
  if (b.failure.empty())
    b.failure = "kernel " + std::string(b.kernel) + ", block (" + std::to_string(b.index.x) + "," +
                std::to_string(b.index.y) + "," + std::to_string(b.index.z) + "): " + why;
  b.wake.notify_all();
  b.next_block.notify_all();
  for (auto& w : b.warps) w->wake.notify_all();
}

// When every live thread waits in a barrier, none can ever complete: a deadlock (a barrier or
// shuffle under a condition that differs between threads). Called with the mutex held.
inline void check_deadlock(Block& b) {
  if (b.waiting_block + b.waiting_warp == 0 || b.waiting_block + b.waiting_warp + b.finished != b.threads) return;
  fail(b, "deadlock: " + std::to_string(b.waiting_block) + " thread(s) wait at __syncthreads, " +
              std::to_string(b.waiting_warp) + " at a warp shuffle, and " + std::to_string(b.finished) +
              " finished the kernel without reaching them; every thread of a block must reach each "
              "__syncthreads (and every lane of a warp each shuffle): look for one under a condition "
              "that differs between threads");
}

// Wait on `wake` until `generation` moves past `seen`; throws Abort when the launch failed. The
// thread that completes the barrier takes the waiters off `waiting` (a woken thread counted as
// waiting until it gets the mutex back would look like a deadlock).
inline void wait(Block& b, std::unique_lock<std::mutex>& lock, std::condition_variable& wake,
                 const uint64_t& generation, uint64_t seen, int& waiting, const char* where) {
  ++waiting;
  check_deadlock(b);
#if KILN_EMU_FIBERS
  // One OS thread: `generation` moves only while this fiber is switched out. (So the timeout
  // cannot fire here: a fiber that loops forever without reaching a barrier hangs the launch.)
  (void)wake, (void)where;
  while (generation == seen && b.failure.empty()) {
    lock.unlock();
    swapcontext(&fiber->context, &scheduler);
    lock.lock();
  }
#else
  while (generation == seen && b.failure.empty()) {
    if (wake.wait_for(lock, b.timeout) == std::cv_status::timeout && generation == seen && b.failure.empty())
      fail(b, std::string("a thread waited at ") + where + " for longer than the emulator's timeout (" +
                  std::to_string(b.timeout.count()) + " s): a thread of the block may loop forever");
  }
#endif
  if (!b.failure.empty()) throw Abort{};
}

inline void sync_block() {
  Block& b = *block;
  arrive(b);
  {
    Unseen unseen;
    std::unique_lock<std::mutex> lock(b.mutex);
    if (!b.failure.empty()) throw Abort{};
    if (++b.arrived == b.threads) {
      b.waiting_block -= b.arrived - 1;
      b.arrived = 0;
      ++b.generation;
      b.wake.notify_all();
    } else {
      wait(b, lock, b.wake, b.generation, b.generation, b.waiting_block, "__syncthreads");
    }
  }
  leave(b);
}

// Called `Unseen` (by `exchange` and `exchange_all`): to TSan a shuffle orders no memory.
inline void sync_warp(Warp& w) {
  Block& b = *block;
  std::unique_lock<std::mutex> lock(b.mutex);
  if (!b.failure.empty()) throw Abort{};
  if (++w.arrived == w.lanes) {
    b.waiting_warp -= w.arrived - 1;
    w.arrived = 0;
    ++w.generation;
    w.wake.notify_all();
    return;
  }
  wait(b, lock, w.wake, w.generation, w.generation, b.waiting_warp, "a warp shuffle");
}

// Every lane of the warp offers `value`; each gets the value of lane `source`, its own where
// `source` is past lane 31 or names a lane the (partial) warp does not have.
template <typename T> inline T exchange(T value, unsigned source) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 64 bits");
  Unseen unseen;  // the values pass through the slots, which are no memory of the kernel's
  Warp& w = *block->warps[warp];
  std::memcpy(&w.slots[lane], &value, sizeof(T));
  sync_warp(w);  // every lane's offer is written
  T result = value;
  if (source < (unsigned)w.lanes) std::memcpy(&result, &w.slots[source], sizeof(T));
  sync_warp(w);  // every lane has read: the slots may be written again
  return result;
}

// Every lane of the warp offers N registers at once; all[l] gets lane l's, or the caller's own
// where the (partial) warp has no lane l, as `exchange` does. One barrier pair for a whole
// fragment: the MMA twin reading 128 registers of other lanes one shuffle (two barriers) at a time
// spent nearly all of a tensor-core GEMM's emulation in the mutex.
template <int N> inline void exchange_all(const float (&mine)[N], float (&all)[32][N]) {
  static_assert(N <= 16, "a fragment exchange moves at most 16 registers per lane");
  Unseen unseen;  // as `exchange`
  Warp& w = *block->warps[warp];
  std::memcpy(w.fragments[lane], mine, sizeof mine);
  sync_warp(w);  // every lane's registers are written
  for (int source = 0; source < 32; ++source)
    std::memcpy(all[source], source < w.lanes ? w.fragments[source] : mine, sizeof mine);
  sync_warp(w);  // every lane has read: the fragments may be written again
}

// The kernel's parameters from the launch's argument array (pointers), in order.
template <typename... P, std::size_t... I>
inline void call(void (*kernel)(P...), void** args, std::index_sequence<I...>) { kernel((P)args[I]...); }
template <typename... P> inline void invoke(void (*kernel)(P...), void** args) {
  call(kernel, args, std::index_sequence_for<P...>{});
}

// One thread of every block in turn: thread `linear` of the block, then wait for the others.
inline void run_thread(Block& b, void (*body)(void**), void** args, uint3 thread, dim3 grid, dim3 dims) {
  block = &b;
  const int linear = (int)(thread.x + dims.x * (thread.y + dims.y * thread.z));
  lane = linear % 32;
  warp = linear / 32;
  threadIdx = thread;
  blockDim = dims;
  gridDim = grid;
  const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {
    blockIdx = uint3{(unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y), (unsigned)(i / grid.x / grid.y)};
    try {
      body(args);
    } catch (Abort&) {
      return;
    }
    // The end of a block is a block-wide barrier: the next block reuses the shared memory.
    arrive(b);
    bool failed = false;
    {
      Unseen unseen;
      std::unique_lock<std::mutex> lock(b.mutex);
      if (++b.finished == b.threads) {  // the block is done: the next one starts from fresh barriers
        b.finished = b.arrived = 0;
        for (auto& w : b.warps) w->arrived = 0;
        b.index = uint3{(unsigned)((i + 1) % grid.x), (unsigned)((i + 1) / grid.x % grid.y),
                        (unsigned)((i + 1) / grid.x / grid.y)};
        ++b.block_generation;
        b.next_block.notify_all();
      } else {
        check_deadlock(b);
        const uint64_t seen = b.block_generation;
        while (b.block_generation == seen && b.failure.empty()) b.next_block.wait(lock);
        failed = !b.failure.empty();
      }
    }
    if (failed) return;
    leave(b);
  }
}

#if KILN_EMU_FIBERS
constexpr size_t fiber_stack_bytes = 256 * 1024, guard_bytes = 4096;

// Fiber i's stack: mapped on first use (pages are committed when touched) and kept for later
// launches, which are serialised; its lowest page is a guard, so an overflow faults.
inline unsigned char* fiber_stack(size_t i) {
  static std::vector<unsigned char*> stacks;
  while (stacks.size() <= i) {
    void* memory = mmap(nullptr, fiber_stack_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) return nullptr;
    mprotect(memory, guard_bytes, PROT_NONE);
    stacks.push_back((unsigned char*)memory);
  }
  return stacks[i];
}

inline void fiber_main() {  // makecontext's entry: one thread of the block, then back to the scheduler
  try {
    fiber_body(fiber_args);
  } catch (Abort&) {
  }
  Block& b = *block;
  std::lock_guard<std::mutex> lock(b.mutex);
  ++b.finished;
  fiber->done = true;
  check_deadlock(b);
}

// Every block in turn, its threads as fibers resumed round-robin until all have finished.
inline void run_fibers(Block& b, void (*body)(void**), void** args, dim3 grid, dim3 dims) {
  std::vector<Fiber> fibers((size_t)b.threads);
  for (int linear = 0; linear < b.threads; ++linear) {
    const unsigned x = (unsigned)linear % dims.x, y = (unsigned)linear / dims.x % dims.y;
    fibers[linear].thread = uint3{x, y, (unsigned)linear / dims.x / dims.y};
    fibers[linear].lane = linear % 32;
    fibers[linear].warp = linear / 32;
    if (fiber_stack((size_t)linear) == nullptr) return fail(b, "no memory for the threads' stacks");
  }
  block = &b, fiber_body = body, fiber_args = args, blockDim = dims, gridDim = grid;
  const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks && b.failure.empty(); ++i) {
    blockIdx = b.index = uint3{(unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y), (unsigned)(i / grid.x / grid.y)};
    b.finished = b.arrived = 0;
    for (auto& w : b.warps) w->arrived = 0;
    for (size_t f = 0; f < fibers.size(); ++f) {
      getcontext(&fibers[f].context);
      fibers[f].context.uc_stack.ss_sp = fiber_stack(f);
      fibers[f].context.uc_stack.ss_size = fiber_stack_bytes;
      fibers[f].context.uc_link = &scheduler;
      makecontext(&fibers[f].context, fiber_main, 0);
      fibers[f].done = false;
    }
    for (int live = b.threads; live > 0;)
      for (auto& f : fibers) {
        if (f.done) continue;
        threadIdx = f.thread, lane = f.lane, warp = f.warp, fiber = &f;
        swapcontext(&scheduler, &f.context);
        live -= f.done;
      }
  }
}
#endif

// Runs `body` (the kernel called on a launch's arguments) on `grid` x `block` threads (dims[0..5])
// with dims[6] bytes of dynamic shared memory; 0, or 1 with the reason in `error`. Launches are
// serialised: shared memory is function-static.
inline int launch(const char* kernel, void (*body)(void**), void** args, const unsigned* dims, double timeout_s,
                  char* error, int error_size) {
  static std::mutex one_launch_at_a_time;
  std::lock_guard<std::mutex> serial(one_launch_at_a_time);
  const dim3 grid{dims[0], dims[1], dims[2]}, shape{dims[3], dims[4], dims[5]};
  // Exactly its size (AddressSanitizer's redzones follow it: bounds mode checks it, unlike the
  // static arrays), filled with 0xFF bytes (NaN floats) as a stand-in for the device's garbage.
  std::unique_ptr<unsigned char, decltype(&std::free)> dynamic((unsigned char*)std::malloc(dims[6] ? dims[6] : 1),
                                                               &std::free);
  std::memset(dynamic.get(), 0xFF, dims[6]);
#if defined(__SANITIZE_ADDRESS__)
  std::fprintf(stderr, "kiln-emulator: dynamic shared memory at %p\n", (void*)dynamic.get());
#endif
  Block b;
  b.dynamic_shared = dynamic.get();
  b.kernel = kernel;
  b.threads = (int)(shape.x * shape.y * shape.z);
  b.timeout = std::chrono::duration<double>(timeout_s);
  for (int first = 0; first < b.threads; first += 32) {
    b.warps.push_back(std::make_unique<Warp>());
    b.warps.back()->lanes = std::min(32, b.threads - first);
  }
#if KILN_EMU_FIBERS
  run_fibers(b, body, args, grid, shape);
#else
  std::vector<std::thread> threads;
  threads.reserve(b.threads);
  for (unsigned z = 0; z < shape.z; ++z)
    for (unsigned y = 0; y < shape.y; ++y)
      for (unsigned x = 0; x < shape.x; ++x)
        threads.emplace_back(run_thread, std::ref(b), body, args, uint3{x, y, z}, grid, shape);
  for (auto& t : threads) t.join();
#endif
  if (b.failure.empty()) return 0;
  std::snprintf(error, (size_t)error_size, "%s", b.failure.c_str());
  return 1;
}

inline unsigned char* dynamic_shared() { return block->dynamic_shared; }

// Atomics: std::atomic_ref makes each one atomic among the block's threads, and an atomic to
// ThreadSanitizer (atomics are no race). Relaxed, as the device's atomicAdd & co. (no fence).
template <typename T> inline T fetch_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <typename T, typename Better> inline T fetch_replace(T* address, T value, Better better) {
  std::atomic_ref<T> target(*address);
  T old = target.load(std::memory_order_relaxed);
  while (better(value, old) && !target.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T> inline T compare_and_swap(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;  // the old value, as atomicCAS returns
}

}  // namespace kiln_emu

// `extern __shared__` on the device: the launch's dynamic shared memory, which every block of a
// launch uses in turn (as it does the static arrays).
#define KILN_DYNAMIC_SHARED(NAME) unsigned char* const NAME = kiln_emu::dynamic_shared()

static inline float atomicAdd(float* a, float v) { return kiln_emu::fetch_add(a, v); }
static inline double atomicAdd(double* a, double v) { return kiln_emu::fetch_add(a, v); }
static inline int atomicAdd(int* a, int v) { return kiln_emu::fetch_add(a, v); }
static inline unsigned atomicAdd(unsigned* a, unsigned v) { return kiln_emu::fetch_add(a, v); }
static inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return kiln_emu::fetch_add(a, v);
}
static inline int atomicMax(int* a, int v) { return kiln_emu::fetch_replace(a, v, [](int x, int y) { return x > y; }); }
static inline int atomicMin(int* a, int v) { return kiln_emu::fetch_replace(a, v, [](int x, int y) { return x < y; }); }
static inline unsigned atomicMax(unsigned* a, unsigned v) {
  return kiln_emu::fetch_replace(a, v, [](unsigned x, unsigned y) { return x > y; });
}
static inline unsigned atomicMin(unsigned* a, unsigned v) {
  return kiln_emu::fetch_replace(a, v, [](unsigned x, unsigned y) { return x < y; });
}
static inline int atomicCAS(int* a, int compare, int v) { return kiln_emu::compare_and_swap(a, compare, v); }
static inline unsigned atomicCAS(unsigned* a, unsigned compare, unsigned v) {
  return kiln_emu::compare_and_swap(a, compare, v);
}
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare, unsigned long long v) {
  return kiln_emu::compare_and_swap(a, compare, v);
}

static inline void __syncthreads() { kiln_emu::sync_block(); }
template <typename T> static inline T __shfl_xor_sync(unsigned, T value, int mask) {
  return kiln_emu::exchange(value, (unsigned)(kiln_emu::lane ^ mask));
}
template <typename T> static inline T __shfl_down_sync(unsigned, T value, unsigned delta) {
  return kiln_emu::exchange(value, (unsigned)kiln_emu::lane + delta);
}
template <typename T> static inline T __shfl_sync(unsigned, T value, int source) {
  return kiln_emu::exchange(value, (unsigned)source & 31u);  // the lane modulo the warp's width
}
// Warp votes: every lane offers its predicate; the ballot has bit l set for each lane l of the
// (partial) warp whose predicate holds, within `mask`.
static inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const float mine[1] = {predicate ? 1.0f : 0.0f};
  float all[32][1];
  kiln_emu::exchange_all(mine, all);
  const int lanes = kiln_emu::block->warps[kiln_emu::warp]->lanes;
  unsigned bits = 0;
  for (int l = 0; l < lanes; ++l) bits |= all[l][0] != 0.0f ? 1u << l : 0u;
  return bits & mask;
}
static inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
static inline int __all_sync(unsigned mask, int predicate) {
  const int lanes = kiln_emu::block->warps[kiln_emu::warp]->lanes;
  const unsigned present = mask & (lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1u);
  return (__ballot_sync(mask, predicate) & present) == present;
}
#endif

#ifdef __CUDACC_RTC__
// The launch's dynamic shared memory (its size is the launch's, up to 48 KiB without the opt-in
// that runtime/cuda.py makes); the host branch above has the emulator's twin.
#define KILN_DYNAMIC_SHARED(NAME) extern __shared__ __align__(16) unsigned char NAME[]
#endif

#define KILN_DEVICE static __device__ __forceinline__

// -- low-precision floats ------------------------------------------------------------------

// The float x rounded to the nearest bf16, ties to even; a NaN becomes the quiet NaN of its
// sign (ml_dtypes' rule, bit-exact with the CPU backend). The result is still a float.
KILN_DEVICE float kiln_round_bf16(float x) {
  const uint32_t bits = __float_as_uint(x);
  if (x != x) return __uint_as_float((bits & 0x80000000u) | 0x7FC00000u);
  // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the dropped
  // half is above the tie, or at the tie with an odd kept part.
  return __uint_as_float((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
}

// The float x rounded to the nearest f16 (ties to even), as a float.
KILN_DEVICE float kiln_round_f16(float x) { return __half2float(__float2half_rn(x)); }

// Loads and stores: exact (registers hold representable values).
KILN_DEVICE float kiln_load(__nv_bfloat16 x) { return __uint_as_float(((uint32_t)__bfloat16_as_ushort(x)) << 16); }
KILN_DEVICE float kiln_load(__half x) { return __half2float(x); }
KILN_DEVICE __nv_bfloat16 kiln_store_bf16(float x) {
  return __ushort_as_bfloat16((unsigned short)(__float_as_uint(x) >> 16));
}
KILN_DEVICE __half kiln_store_f16(float x) { return __float2half_rn(x); }

// f64 -> f16 in one rounding (the device converts directly; two roundings through f32 could differ).
KILN_DEVICE float kiln_f64_to_f16(double x) { return __half2float(__double2half(x)); }

// f64 -> f32 rounding towards zero with the lowest bit set when inexact ("round to odd"): a
// later rounding to bf16 then rounds once, as a direct conversion (and ml_dtypes >= 0.7) does.
KILN_DEVICE float kiln_f64_to_f32_odd(double x) {
  const float nearest = (float)x;
  if ((double)nearest == x || x != x) return nearest;
  uint32_t bits = __float_as_uint(nearest);
  if (x > 0 ? (double)nearest > x : (double)nearest < x) bits -= 1u;  // sign-magnitude: one ulp in
  return __uint_as_float(bits | 1u);
}
KILN_DEVICE float kiln_f64_to_bf16(double x) { return kiln_round_bf16(kiln_f64_to_f32_odd(x)); }

// i64 -> bf16 in one rounding: the top 53 bits of the magnitude, the lowest set when anything
// below was dropped, are exact in a double (the CPU backend's `_int_to_f64_round_to_odd`).
KILN_DEVICE float kiln_i64_to_bf16(int64_t x) {
  const uint64_t magnitude = x < 0 ? 0ull - (uint64_t)x : (uint64_t)x;
#ifdef __CUDACC_RTC__
  const int leading = __clzll((long long)magnitude);
#else
  const int leading = magnitude ? __builtin_clzll(magnitude) : 64;
#endif
  const int dropped = leading < 11 ? 11 - leading : 0;
  const uint64_t kept = magnitude >> dropped << dropped;
  const uint64_t sticky = kept != magnitude ? 1ull << dropped : 0ull;
  const double odd = (double)(kept | sticky);
  return kiln_f64_to_bf16(x < 0 ? -odd : odd);
}

// bf16 -> f16: ml_dtypes turns a NaN into the quiet NaN of its sign.
KILN_DEVICE float kiln_bf16_to_f16(float x) {
  if (x != x) return __half2float(__ushort_as_half((unsigned short)((__float_as_uint(x) >> 16 & 0x8000u) | 0x7E00u)));
  return kiln_round_f16(x);
}

// -- max and min -----------------------------------------------------------------------------

// `a if isnan(a) or a >= b else b`: a NaN on either side wins and a tie keeps a (fmaxf would
// drop NaNs and may pick either zero).
template <typename T> KILN_DEVICE T kiln_max(T a, T b) { return (a != a || a >= b) ? a : b; }
template <typename T> KILN_DEVICE T kiln_min(T a, T b) { return (a != a || a <= b) ? a : b; }

// -- integers --------------------------------------------------------------------------------

template <typename T> struct kiln_unsigned;
template <> struct kiln_unsigned<int8_t> { typedef uint8_t type; };
template <> struct kiln_unsigned<uint8_t> { typedef uint8_t type; };
template <> struct kiln_unsigned<int32_t> { typedef uint32_t type; };
template <> struct kiln_unsigned<int64_t> { typedef uint64_t type; };

// Two's-complement wrapping without signed overflow (undefined in C++).
template <typename T> KILN_DEVICE T kiln_negate(T a) {
  return (T)((typename kiln_unsigned<T>::type)0 - (typename kiln_unsigned<T>::type)a);
}

// C division (truncating) with x / 0 = 0 and MIN / -1 = MIN (it wraps), where C is undefined.
template <typename T> KILN_DEVICE T kiln_div(T a, T b) {
  if (b == 0) return 0;
  if ((T)-1 < 0 && b == (T)-1) return kiln_negate(a);
  return (T)(a / b);
}

// C remainder (the dividend's sign) with x % 0 = 0 and x % -1 = 0.
template <typename T> KILN_DEVICE T kiln_mod(T a, T b) {
  if (b == 0 || ((T)-1 < 0 && b == (T)-1)) return 0;
  return (T)(a % b);
}

// |a|, with |MIN| = MIN (it wraps, as numpy does).
template <typename T> KILN_DEVICE T kiln_abs(T a) { return a < 0 ? kiln_negate(a) : a; }

// base ** exponent by squaring, wrapping; a negative exponent gives 1 (as the CPU backend).
template <typename T> KILN_DEVICE T kiln_ipow(T base, T exponent) {
  typedef typename kiln_unsigned<T>::type U;
  U result = 1, power = (U)base;
  for (T rest = exponent; rest > 0; rest = (T)((U)rest >> 1)) {
    if (rest & 1) result = (U)(result * power);
    power = (U)(power * power);
  }
  return (T)result;
}

// -- float to integer ------------------------------------------------------------------------

// Truncation towards zero, saturating at the integer type's bounds, NaN -> 0 (LLVM's
// fptosi.sat/fptoui.sat), where C leaves out-of-range conversions undefined. The _rz
// conversions saturate on the device; the narrow types clamp the saturated int.
// dot4_u8s8 (the kernel IR's Call; VNNI's vpdpbusd for one lane): acc plus the sum over the 4
// bytes of u8(a) * s8(b), wrapping in i32. On the device one dp4a (sm_61+): its mixed form
// dp4a.u32.s32 zero-extends a's bytes and sign-extends b's, and its 32-bit sum wraps; CUDA's
// __dp4a overloads are s32 x s32 or u32 x u32 only, hence the inline PTX. The host twin adds the
// products in unsigned arithmetic (no signed overflow).
#ifdef __CUDACC_RTC__
KILN_DEVICE int32_t kiln_dp4a(int32_t acc, int32_t a, int32_t b) {
  int32_t d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(acc));
  return d;
}
#else
KILN_DEVICE int32_t kiln_dp4a(int32_t acc, int32_t a, int32_t b) {
  uint32_t sum = (uint32_t)acc;
  for (int k = 0; k < 4; ++k) {
    int32_t ua = (int32_t)(((uint32_t)a >> (8 * k)) & 0xFFu);
    int32_t sb = (int32_t)(int8_t)(((uint32_t)b >> (8 * k)) & 0xFFu);
    sum += (uint32_t)(ua * sb);
  }
  return (int32_t)sum;
}
#endif

KILN_DEVICE int64_t kiln_to_i64(float x) { return __float2ll_rz(x); }
KILN_DEVICE int64_t kiln_to_i64(double x) { return __double2ll_rz(x); }
KILN_DEVICE int32_t kiln_to_i32(float x) { return __float2int_rz(x); }
KILN_DEVICE int32_t kiln_to_i32(double x) { return __double2int_rz(x); }
KILN_DEVICE int8_t kiln_to_i8(float x) { return (int8_t)max(-128, min(127, __float2int_rz(x))); }
KILN_DEVICE int8_t kiln_to_i8(double x) { return (int8_t)max(-128, min(127, __double2int_rz(x))); }
KILN_DEVICE uint8_t kiln_to_u8(float x) { return (uint8_t)min(255u, __float2uint_rz(x)); }
KILN_DEVICE uint8_t kiln_to_u8(double x) { return (uint8_t)min(255u, __double2uint_rz(x)); }

// -- warp shuffles -----------------------------------------------------------------------------

// The kernel IR's `shfl_xor`, `shfl_down` and `shfl_idx` (ir/loop/nodes.py): a value moves between
// the 32 lanes of a warp, all of which take part (the full mask); a lane whose source would be
// past lane 31 keeps its own value. T is float, double, int32_t or int64_t (f16/bf16 registers
// are floats), which __shfl_*_sync carry exactly.
template <typename T> KILN_DEVICE T kiln_shfl_xor(T value, int32_t mask) {
  return __shfl_xor_sync(0xFFFFFFFFu, value, mask);
}
template <typename T> KILN_DEVICE T kiln_shfl_down(T value, int32_t delta) {
  return __shfl_down_sync(0xFFFFFFFFu, value, (unsigned)delta);
}
template <typename T> KILN_DEVICE T kiln_shfl_idx(T value, int32_t lane) {
  return __shfl_sync(0xFFFFFFFFu, value, lane);
}

// -- tensor cores (issue 11: backends/cuda/templates_gpu_gemm.py) ---------------------------------

// The kernel IR's `mma_m16n8k16_f16` and `mma_m16n8k16_bf16` (ir/loop/nodes.py): mma.sync
// m16n8k16 with f32 accumulators, warp-collective (every lane takes part). Each lane passes its
// fragments as the PTX ISA lays them out (group = lane / 4, quad = lane % 4): a0..a7 of A (16 x 16,
// rows group and group + 8, columns 2 quad, 2 quad + 1 and those + 8), b0..b3 of B (16 x 8, rows
// 2 quad, 2 quad + 1 and those + 8, column group), c0..c3 of C (16 x 8, rows group and group + 8,
// columns 2 quad, 2 quad + 1); it receives element `index` (a constant 0..3) of its D = A B + C
// fragment. The kernel IR has one call per element; the printer turns the four calls of one
// product (same operands, index 0..3, in a row) into one `_x4` call (NVVM does not merge equal asm
// statements, so four calls would be four mma instructions). A and B arrive as floats holding f16/bf16
// values (registers hold those as floats) and are packed in pairs, the lower index in the low half.
#ifdef __CUDACC_RTC__
static __device__ __forceinline__ uint32_t kiln_pack_f16x2(float lo, float hi) {
  return (uint32_t)__half_as_ushort(__float2half_rn(lo)) | ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
}
static __device__ __forceinline__ uint32_t kiln_pack_bf16x2(float lo, float hi) {  // exact: lo, hi are bf16 values
  return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xFFFF0000u);
}
#define KILN_MMA_M16N8K16(NAME, PTX_TYPE, PACK)                                                            \
  static __device__ __forceinline__ void NAME##_x4(float& d0, float& d1, float& d2, float& d3, float a0, float a1, \
                                                   float a2, float a3, float a4, float a5, float a6, float a7,    \
                                                   float b0, float b1, float b2, float b3, float c0, float c1,    \
                                                   float c2, float c3) {                                          \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 {%0, %1, %2, %3}, "            \
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"                                                \
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)                                                           \
        : "r"(PACK(a0, a1)), "r"(PACK(a2, a3)), "r"(PACK(a4, a5)), "r"(PACK(a6, a7)), "r"(PACK(b0, b1)),   \
          "r"(PACK(b2, b3)), "f"(c0), "f"(c1), "f"(c2), "f"(c3));                                          \
  }                                                                                                        \
  static __device__ __forceinline__ float NAME(float a0, float a1, float a2, float a3, float a4, float a5,    \
                                               float a6, float a7, float b0, float b1, float b2, float b3,    \
                                               float c0, float c1, float c2, float c3, int32_t index) {       \
    float d[4];                                                                                            \
    NAME##_x4(d[0], d[1], d[2], d[3], a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, c0, c1, c2, c3);     \
    return d[index];                                                                                       \
  }
KILN_MMA_M16N8K16(kiln_mma_m16n8k16_f16, "f16", kiln_pack_f16x2)
KILN_MMA_M16N8K16(kiln_mma_m16n8k16_bf16, "bf16", kiln_pack_bf16x2)
#undef KILN_MMA_M16N8K16
#else
// The host twin: the lanes exchange their A and B fragments (every lane calls it, as on the
// device), then each lane takes its D elements' rows of A and columns of B from the lanes that hold
// them, by the same layouts, and accumulates in f32 in k order (products of f16/bf16 values are
// exact in f32), as the lockstep interpreter (ir/loop/lockstep.py) does. The device's summation
// order is its own.
static inline void kiln_mma_m16n8k16(float d[4], const float a[8], const float b[4], const float c[4]) {
  float mine[12], all[32][12];  // per lane: a0..a7, then b0..b3
  for (int32_t i = 0; i < 8; ++i) mine[i] = a[i];
  for (int32_t i = 0; i < 4; ++i) mine[8 + i] = b[i];
  kiln_emu::exchange_all(mine, all);
  const int32_t group = kiln_emu::lane >> 2, quad = kiln_emu::lane & 3;
  for (int32_t index = 0; index < 4; ++index) {
    const int32_t row_half = index >> 1;  // D rows group (+ 8 for index 2, 3): A's a2, a3, a6, a7 hold row + 8
    float sum = c[index];
    for (int32_t k = 0; k < 16; ++k) {
      const int32_t pair = k & 1, high = k >> 3, holder = (k & 7) >> 1;
      // A[row][k] sits in lane 4 * (row % 8) + (k % 8) / 2, element (k & 1) + 2 row_half + 4 (k >= 8);
      // B[k][col] in lane 4 col + (k % 8) / 2, element (k & 1) + 2 (k >= 8); col = 2 quad + (index & 1).
      const float x = all[4 * group + holder][pair + 2 * row_half + 4 * high];
      const float y = all[4 * (2 * quad + (index & 1)) + holder][8 + pair + 2 * high];
      sum = sum + x * y;
    }
    d[index] = sum;
  }
}
#define KILN_MMA_M16N8K16(NAME)                                                                          \
  static inline float NAME(float a0, float a1, float a2, float a3, float a4, float a5, float a6, float a7, \
                           float b0, float b1, float b2, float b3, float c0, float c1, float c2, float c3,   \
                           int32_t index) {                                                                \
    const float a[8] = {a0, a1, a2, a3, a4, a5, a6, a7}, b[4] = {b0, b1, b2, b3}, c[4] = {c0, c1, c2, c3}; \
    float d[4];                                                                                            \
    kiln_mma_m16n8k16(d, a, b, c);                                                                         \
    return d[index];                                                                                       \
  }                                                                                                        \
  static inline void NAME##_x4(float& d0, float& d1, float& d2, float& d3, float a0, float a1, float a2,   \
                               float a3, float a4, float a5, float a6, float a7, float b0, float b1,       \
                               float b2, float b3, float c0, float c1, float c2, float c3) {               \
    const float a[8] = {a0, a1, a2, a3, a4, a5, a6, a7}, b[4] = {b0, b1, b2, b3}, c[4] = {c0, c1, c2, c3}; \
    float d[4];                                                                                            \
    kiln_mma_m16n8k16(d, a, b, c);                                                                         \
    d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];                                                            \
  }
KILN_MMA_M16N8K16(kiln_mma_m16n8k16_f16)
KILN_MMA_M16N8K16(kiln_mma_m16n8k16_bf16)
#undef KILN_MMA_M16N8K16
#endif

// -- int8 tensor cores (issue 10: backends/cuda/templates_gpu_quant.py) ---------------------------

// The kernel IR's `mma_m16n8k32_s8s8` and `mma_m16n8k32_u8s8` (ir/loop/lockstep_int8.py): mma.sync
// m16n8k32 with s32 accumulators, A signed (s8) or unsigned (u8) bytes, B signed bytes,
// warp-collective. Operands are i32 words of four bytes, the lowest byte the lowest k. Per the PTX
// ISA's m16n8k32 layout (group = lane / 4, quad = lane % 4): a0..a3 hold A's row group, row
// group + 8, row group (k + 16), row group + 8 (k + 16), each the bytes at k = 4 quad .. 4 quad + 3;
// b0, b1 hold B's column group at k = 4 quad .. 4 quad + 3 and those + 16; c0..c3 and D as the
// f16 MMA's accumulators. Without .satfinite the sums wrap modulo 2^32, the kernel IR's i32 rule.
#ifdef __CUDACC_RTC__
#define KILN_MMA_S8(NAME, A_TYPE)                                                                          \
  static __device__ __forceinline__ void NAME##_x4(int32_t& d0, int32_t& d1, int32_t& d2, int32_t& d3,        \
                                                   int32_t a0, int32_t a1, int32_t a2, int32_t a3, int32_t b0, \
                                                   int32_t b1, int32_t c0, int32_t c1, int32_t c2, int32_t c3) { \
    asm("mma.sync.aligned.m16n8k32.row.col.s32." A_TYPE ".s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "       \
        "{%8, %9}, {%10, %11, %12, %13};"                                                                  \
        : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)                                                           \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(c0), "r"(c1), "r"(c2), "r"(c3));       \
  }
#else
// The host twin: the lanes exchange their A and B words (as bit patterns in the float slots of
// `exchange_all`), then each lane sums its D elements' products in k order, wrapping in uint32_t.
static inline void kiln_mma_m16n8k32_s8(int32_t d[4], const int32_t a[4], const int32_t b[2], const int32_t c[4],
                                        bool a_signed) {
  float mine[6], all[32][6];  // per lane: a0..a3, then b0, b1
  std::memcpy(mine, a, 4 * sizeof(int32_t));
  std::memcpy(mine + 4, b, 2 * sizeof(int32_t));
  kiln_emu::exchange_all(mine, all);
  const int32_t group = kiln_emu::lane >> 2, quad = kiln_emu::lane & 3;
  for (int32_t index = 0; index < 4; ++index) {
    const int32_t row_half = index >> 1, column = 2 * quad + (index & 1);
    uint32_t sum = (uint32_t)c[index];
    for (int32_t k = 0; k < 32; ++k) {
      // A[row][k] is byte k % 4 of word 2 (k >= 16) + (row >= 8) of lane 4 (row % 8) + (k % 16) / 4;
      // B[k][column] byte k % 4 of word (k >= 16) of lane 4 column + (k % 16) / 4.
      const int32_t holder = (k & 15) >> 2, shift = 8 * (k & 3);
      uint32_t x, y;
      std::memcpy(&x, &all[4 * group + holder][2 * (k >> 4) + row_half], 4);
      std::memcpy(&y, &all[4 * column + holder][4 + (k >> 4)], 4);
      const int32_t byte_a = a_signed ? (int32_t)(int8_t)(x >> shift) : (int32_t)(uint8_t)(x >> shift);
      sum += (uint32_t)(byte_a * (int32_t)(int8_t)(y >> shift));
    }
    d[index] = (int32_t)sum;
  }
}
#define KILN_MMA_S8(NAME, A_TYPE)                                                                          \
  static inline void NAME##_x4(int32_t& d0, int32_t& d1, int32_t& d2, int32_t& d3, int32_t a0, int32_t a1,    \
                               int32_t a2, int32_t a3, int32_t b0, int32_t b1, int32_t c0, int32_t c1,       \
                               int32_t c2, int32_t c3) {                                                     \
    const int32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1}, c[4] = {c0, c1, c2, c3};                      \
    int32_t d[4];                                                                                          \
    kiln_mma_m16n8k32_s8(d, a, b, c, A_TYPE[0] == 's');                                                    \
    d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];                                                            \
  }
#endif
// One element of D (the printer merges the four calls of one product into one `_x4`).
#define KILN_MMA_S8_ELEMENT(NAME)                                                                          \
  KILN_DEVICE int32_t NAME(int32_t a0, int32_t a1, int32_t a2, int32_t a3, int32_t b0, int32_t b1, int32_t c0, \
                           int32_t c1, int32_t c2, int32_t c3, int32_t index) {                              \
    int32_t d[4];                                                                                          \
    NAME##_x4(d[0], d[1], d[2], d[3], a0, a1, a2, a3, b0, b1, c0, c1, c2, c3);                             \
    return d[index];                                                                                       \
  }
KILN_MMA_S8(kiln_mma_s8_s8s8, "s8")
KILN_MMA_S8(kiln_mma_s8_u8s8, "u8")
KILN_MMA_S8_ELEMENT(kiln_mma_s8_s8s8)
KILN_MMA_S8_ELEMENT(kiln_mma_s8_u8s8)
#undef KILN_MMA_S8
#undef KILN_MMA_S8_ELEMENT

// -- asynchronous copies and ldmatrix (issue 11: backends/cuda/gemm_staging.py, templates_gpu_mma.py) --

// The kernel IR's `cp_async` (a Store's value), `cp_async_commit`, `cp_async_wait`, `ldmatrix_x4`,
// `ldmatrix_x4_trans` and `mma_m16n8k16_f16x2/bf16x2` (ir/loop/nodes.py). Shared arrays are declared
// 16-byte aligned (`__align__`): both move 16-byte rows. On the device: cp.async (.cg for 16 bytes,
// .ca for 4 and 8; `valid` false is a src-size of 0, which zero-fills and reads nothing),
// commit_group and wait_group, ldmatrix m8n8 .x4 (.trans) of b16 into four registers, which the
// MMA takes as they are (two 16-bit elements each, the first in the low half).
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifdef __CUDACC_RTC__
KILN_DEVICE uint32_t kiln_shared_address(const void* pointer) { return (uint32_t)__cvta_generic_to_shared(pointer); }
template <int BYTES> KILN_DEVICE void kiln_cp_async(void* shared, const void* global, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  if (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kiln_shared_address(shared)), "l"(global),
                 "r"(valid ? 16 : 0) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(kiln_shared_address(shared)), "l"(global),
                 "n"(BYTES), "r"(valid ? BYTES : 0) : "memory");
}
KILN_DEVICE int32_t kiln_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  return 0;
}
template <int PENDING> KILN_DEVICE int32_t kiln_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
  return 0;
}
#define KILN_LDMATRIX(NAME, TRANS)                                                                            \
  template <typename T> KILN_DEVICE void NAME(int32_t& r0, int32_t& r1, int32_t& r2, int32_t& r3, const T* row) { \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" TRANS ".shared.b16 {%0, %1, %2, %3}, [%4];\n"              \
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)                                                   \
                 : "r"(kiln_shared_address(row)));                                                          \
  }
KILN_LDMATRIX(kiln_ldmatrix_x4, "")
KILN_LDMATRIX(kiln_ldmatrix_x4_trans, ".trans")
#undef KILN_LDMATRIX
#define KILN_MMA_X2(NAME, PTX_TYPE)                                                                           \
  KILN_DEVICE void NAME##_x4(float& d0, float& d1, float& d2, float& d3, int32_t a0, int32_t a1, int32_t a2,    \
                             int32_t a3, int32_t b0, int32_t b1, float c0, float c1, float c2, float c3) {      \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 {%0, %1, %2, %3}, "               \
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"                                                   \
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)                                                              \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));           \
  }
KILN_MMA_X2(kiln_mma_m16n8k16_f16x2, "f16")
KILN_MMA_X2(kiln_mma_m16n8k16_bf16x2, "bf16")
#undef KILN_MMA_X2
#else
// The host twins. A copy lands at the wait that covers its group (copy-at-wait, not at issue), so
// a kernel that reads a stage without waiting for it reads stale memory and computes a wrong result
// here, and one that waits but skips the barrier after the wait has a thread write (the landing)
// while another reads, which race mode reports. Each emulated thread keeps its own copies in flight
// (by its linear index: fibers share an OS thread). Misaligned rows or copies fail the launch, as
// they fault on the device. ldmatrix: the lanes exchange their row pointers, then each gathers its
// elements by the PTX ISA layout, as ir/loop/lockstep_tiles.py does; the packed MMA unpacks its
// registers into the f16/bf16 values and runs the MMA twin above.
namespace kiln_tiles {
struct Copy {
  void* shared;
  const void* global;
  int bytes;
  bool valid;
};
struct InFlight {
  std::vector<Copy> issued;       // not landed, in issue order
  std::vector<size_t> committed;  // issued.size() at each commit not yet waited for
  const void* block = nullptr;    // whose they are: copies a block left in flight never land in another
  const char* kernel = nullptr;
  uint3 index{0, 0, 0};
};
inline InFlight& in_flight() {
  static InFlight threads[1024];  // one per thread of the block (blocks and launches run one at a time)
  InFlight& mine = threads[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
  const kiln_emu::Block* now = kiln_emu::block;
  if (mine.block != now || mine.kernel != now->kernel || mine.index.x != blockIdx.x || mine.index.y != blockIdx.y ||
      mine.index.z != blockIdx.z) {
    mine.issued.clear(), mine.committed.clear();
    mine.block = now, mine.kernel = now->kernel, mine.index = blockIdx;
  }
  return mine;
}
[[noreturn]] inline void fault(const std::string& why) {
  kiln_emu::Block& b = *kiln_emu::block;
  {
    std::unique_lock<std::mutex> lock(b.mutex);
    kiln_emu::fail(b, why + " (thread " + std::to_string(threadIdx.x) + "); the device faults");
  }
  throw kiln_emu::Abort{};
}
inline float element(int32_t bits, int half, const __half*) {
  return __half2float(__ushort_as_half((unsigned short)((uint32_t)bits >> (16 * half))));
}
inline float element(int32_t bits, int half, const __nv_bfloat16*) {
  return __uint_as_float(((uint32_t)bits >> (16 * half)) << 16);
}
}  // namespace kiln_tiles

template <int BYTES> static inline void kiln_cp_async(void* shared, const void* global, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  if ((uintptr_t)shared % BYTES || (valid && (uintptr_t)global % BYTES))
    kiln_tiles::fault("cp.async of " + std::to_string(BYTES) + " bytes at a misaligned address");
  kiln_tiles::in_flight().issued.push_back({shared, global, BYTES, valid});
}
static inline int32_t kiln_cp_async_commit() {
  kiln_tiles::InFlight& mine = kiln_tiles::in_flight();
  mine.committed.push_back(mine.issued.size());
  return 0;
}
template <int PENDING> static inline int32_t kiln_cp_async_wait() {
  kiln_tiles::InFlight& mine = kiln_tiles::in_flight();
  if (mine.committed.size() <= (size_t)PENDING) return 0;
  const size_t groups = mine.committed.size() - PENDING, landed = mine.committed[groups - 1];
  for (size_t i = 0; i < landed; ++i) {
    const kiln_tiles::Copy& copy = mine.issued[i];
    if (copy.valid)
      std::memcpy(copy.shared, copy.global, (size_t)copy.bytes);
    else
      std::memset(copy.shared, 0, (size_t)copy.bytes);
  }
  mine.issued.erase(mine.issued.begin(), mine.issued.begin() + (std::ptrdiff_t)landed);
  mine.committed.erase(mine.committed.begin(), mine.committed.begin() + (std::ptrdiff_t)groups);
  for (size_t& end : mine.committed) end -= landed;
  return 0;
}
template <typename T> static inline void kiln_ldmatrix(int32_t (&r)[4], const T* row, bool trans) {
  if ((uintptr_t)row % 16) kiln_tiles::fault("ldmatrix of a row that is not 16-byte aligned");
  float mine[2], all[32][2];  // this lane's row pointer as two 32-bit words, and every lane's
  std::memcpy(mine, &row, sizeof row);
  kiln_emu::exchange_all(mine, all);
  const int lane = kiln_emu::lane;
  for (int matrix = 0; matrix < 4; ++matrix) {  // register j: of matrix j, whose rows lanes 8j .. 8j + 7 supply
    uint32_t bits = 0;
    for (int half = 0; half < 2; ++half) {
      const T* source;
      std::memcpy(&source, all[8 * matrix + (trans ? 2 * (lane % 4) + half : lane / 4)], sizeof source);
      bits |= (uint32_t)source[trans ? lane / 4 : 2 * (lane % 4) + half].kiln_bits << (16 * half);
    }
    r[matrix] = (int32_t)bits;
  }
}
#define KILN_LDMATRIX(NAME, TRANS)                                                                            \
  template <typename T>                                                                                     \
  static inline void NAME(int32_t& r0, int32_t& r1, int32_t& r2, int32_t& r3, const T* row) {              \
    int32_t r[4];                                                                                           \
    kiln_ldmatrix(r, row, TRANS);                                                                           \
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];                                                             \
  }
KILN_LDMATRIX(kiln_ldmatrix_x4, false)
KILN_LDMATRIX(kiln_ldmatrix_x4_trans, true)
#undef KILN_LDMATRIX
#define KILN_MMA_X2(NAME, T)                                                                                  \
  static inline void NAME##_x4(float& d0, float& d1, float& d2, float& d3, int32_t a0, int32_t a1, int32_t a2, \
                               int32_t a3, int32_t b0, int32_t b1, float c0, float c1, float c2, float c3) {    \
    const int32_t packed[6] = {a0, a1, a2, a3, b0, b1};                                                     \
    float ab[12], d[4];                                                                                     \
    for (int i = 0; i < 12; ++i) ab[i] = kiln_tiles::element(packed[i / 2], i % 2, (const T*)nullptr);      \
    const float c[4] = {c0, c1, c2, c3};                                                                    \
    kiln_mma_m16n8k16(d, ab, ab + 8, c);                                                                    \
    d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];                                                             \
  }
KILN_MMA_X2(kiln_mma_m16n8k16_f16x2, __half)
KILN_MMA_X2(kiln_mma_m16n8k16_bf16x2, __nv_bfloat16)
#undef KILN_MMA_X2
#endif
// One register of the lane's four, one element of D (the printer merges the four calls of one
// ldmatrix or one product into one).
template <typename T> KILN_DEVICE int32_t kiln_ldmatrix_x4_at(const T* row, int32_t index) {
  int32_t r[4];
  kiln_ldmatrix_x4(r[0], r[1], r[2], r[3], row);
  return r[index];
}
template <typename T> KILN_DEVICE int32_t kiln_ldmatrix_x4_trans_at(const T* row, int32_t index) {
  int32_t r[4];
  kiln_ldmatrix_x4_trans(r[0], r[1], r[2], r[3], row);
  return r[index];
}
#define KILN_MMA_X2_ELEMENT(NAME)                                                                             \
  KILN_DEVICE float NAME(int32_t a0, int32_t a1, int32_t a2, int32_t a3, int32_t b0, int32_t b1, float c0,      \
                         float c1, float c2, float c3, int32_t index) {                                      \
    float d[4];                                                                                             \
    NAME##_x4(d[0], d[1], d[2], d[3], a0, a1, a2, a3, b0, b1, c0, c1, c2, c3);                               \
    return d[index];                                                                                        \
  }
KILN_MMA_X2_ELEMENT(kiln_mma_m16n8k16_f16x2)
KILN_MMA_X2_ELEMENT(kiln_mma_m16n8k16_bf16x2)
#undef KILN_MMA_X2_ELEMENT

// -- TF32 tensor cores (issue 11: backends/cuda/templates_gpu_tf32.py) ----------------------------

// The kernel IR's `tf32_round` and `mma_m16n8k8_tf32` (ir/loop/lockstep_tf32.py). `tf32_round`: the
// float rounded to TF32 (10 explicit mantissa bits, the 13 low bits zero), to nearest with ties
// away from zero: cvt.rna.tf32.f32. The MMA: mma.sync m16n8k8 with .tf32 A and B and f32
// accumulators, warp-collective, each lane passing its fragments by the PTX ISA's layout for
// m16n8k8 .tf32 (group = lane / 4, quad = lane % 4): a0..a3 are A's (group, quad), (group + 8,
// quad), (group, quad + 4), (group + 8, quad + 4); b0, b1 B's (quad, group), (quad + 4, group);
// c0..c3 and D as the f16 MMA's. A and B are TF32 values in float registers (the template rounds
// each once, as it loads it from shared memory), handed to the instruction as their bits.
#ifdef __CUDACC_RTC__
KILN_DEVICE float kiln_tf32_round(float x) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
  return __uint_as_float(bits & 0xFFFFE000u);  // the low bits are no part of the format: zero, as the twins give
}
KILN_DEVICE void kiln_mma_m16n8k8_tf32_x4(float& d0, float& d1, float& d2, float& d3, float a0, float a1, float a2,
                                          float a3, float b0, float b1, float c0, float c1, float c2, float c3) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(__float_as_uint(a0)), "r"(__float_as_uint(a1)), "r"(__float_as_uint(a2)), "r"(__float_as_uint(a3)),
        "r"(__float_as_uint(b0)), "r"(__float_as_uint(b1)), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
}
#else
// The host twins. The rounding by the bits: adding half of the lowest kept bit to the magnitude
// carries into the kept bits exactly when the dropped part is at least half of it (ties away from
// zero; past the largest finite value, infinity); a NaN becomes the quiet NaN of its sign. The
// MMA as the f16 twin: the lanes exchange their A and B elements, each lane gathers its D
// elements' rows of A and columns of B by the layout and accumulates in k order in f32 (products
// of TF32 values are exact). An operand that is not a TF32 value fails the launch: the device
// reads only its upper 19 bits, so the schedule forgot to round it.
static inline float kiln_tf32_round(float x) {
  const uint32_t bits = __float_as_uint(x);
  if (x != x) return __uint_as_float((bits & 0x80000000u) | 0x7FC00000u);
  return __uint_as_float((bits + 0x1000u) & 0xFFFFE000u);
}
static inline void kiln_mma_m16n8k8_tf32_x4(float& d0, float& d1, float& d2, float& d3, float a0, float a1, float a2,
                                            float a3, float b0, float b1, float c0, float c1, float c2, float c3) {
  const float mine[6] = {a0, a1, a2, a3, b0, b1};
  float all[32][6];
  kiln_emu::exchange_all(mine, all);  // every lane first: a lane that fails below leaves none waiting
  for (int i = 0; i < 6; ++i)
    if (__float_as_uint(mine[i]) & 0x1FFFu) {
      kiln_emu::Block& b = *kiln_emu::block;
      {
        std::unique_lock<std::mutex> lock(b.mutex);
        kiln_emu::fail(b, std::string("mma.m16n8k8 .tf32 operand ") + (i < 4 ? "a" : "b") +
                              std::to_string(i < 4 ? i : i - 4) + " of thread " + std::to_string(threadIdx.x) +
                              " is not a TF32 value (round it with kiln_tf32_round)");
      }
      throw kiln_emu::Abort{};
    }
  const int32_t group = kiln_emu::lane >> 2, quad = kiln_emu::lane & 3;
  const float c[4] = {c0, c1, c2, c3};
  float d[4];
  for (int32_t index = 0; index < 4; ++index) {
    const int32_t row_half = index >> 1, column = 2 * quad + (index & 1);
    float sum = c[index];
    for (int32_t k = 0; k < 8; ++k) {
      // A[row][k] sits in lane 4 (row % 8) + k % 4, element (row >= 8) + 2 (k >= 4); B[k][column]
      // in lane 4 column + k % 4, element 4 + (k >= 4).
      const float x = all[4 * group + (k & 3)][row_half + 2 * (k >> 2)];
      const float y = all[4 * column + (k & 3)][4 + (k >> 2)];
      sum = sum + x * y;
    }
    d[index] = sum;
  }
  d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
}
#endif
// One element of D (the printer merges the four calls of one product into one `_x4`).
KILN_DEVICE float kiln_mma_m16n8k8_tf32(float a0, float a1, float a2, float a3, float b0, float b1, float c0, float c1,
                                        float c2, float c3, int32_t index) {
  float d[4];
  kiln_mma_m16n8k8_tf32_x4(d[0], d[1], d[2], d[3], a0, a1, a2, a3, b0, b1, c0, c1, c2, c3);
  return d[index];
}

// -- vector loads and stores (issue 11: backends/cuda/templates_gpu_vector.py) ---------------------

// The kernel IR's `vector_load` and `vector_store` (ir/loop/nodes.py): n consecutive elements of a
// global buffer moved by one 4-, 8- or 16-byte access whose address the schedule proved a multiple
// of its size. On the device the bytes move as one uint32_t, uint2 or uint4 (ld/st.global.v4.b32 for
// 16); on the host they are copied after the same alignment check, so a misaligned vector fails the
// launch there as it faults here. Registers hold f16/bf16 widened to float (kiln_load), and values
// are narrowed as a scalar store narrows them.
template <typename S, int N> struct alignas(N * sizeof(S)) kiln_vector {
  static_assert(N * sizeof(S) == 4 || N * sizeof(S) == 8 || N * sizeof(S) == 16, "a vector moves 4, 8 or 16 bytes");
  S element[N];
};
#ifdef __CUDACC_RTC__
template <int BYTES> struct kiln_vector_word;  // the register type that moves BYTES at once
template <> struct kiln_vector_word<4> { typedef uint32_t type; };
template <> struct kiln_vector_word<8> { typedef uint2 type; };
template <> struct kiln_vector_word<16> { typedef uint4 type; };
template <int BYTES> KILN_DEVICE void kiln_vector_copy(void* to, const void* from, const void*) {
  typedef typename kiln_vector_word<BYTES>::type Word;
  *reinterpret_cast<Word*>(to) = *reinterpret_cast<const Word*>(from);
}
#else
template <int BYTES> static inline void kiln_vector_copy(void* to, const void* from, const void* global) {
  if ((uintptr_t)global % BYTES)
    kiln_tiles::fault("a vector access of " + std::to_string(BYTES) + " bytes at a misaligned address");
  std::memcpy(to, from, BYTES);
}
#endif
template <typename S> KILN_DEVICE S kiln_widen(S x) { return x; }
KILN_DEVICE float kiln_widen(__half x) { return kiln_load(x); }
KILN_DEVICE float kiln_widen(__nv_bfloat16 x) { return kiln_load(x); }
template <typename S, typename R> KILN_DEVICE S kiln_narrow(R x, const S*) { return (S)x; }
KILN_DEVICE __half kiln_narrow(float x, const __half*) { return kiln_store_f16(x); }
KILN_DEVICE __nv_bfloat16 kiln_narrow(float x, const __nv_bfloat16*) { return kiln_store_bf16(x); }

template <typename S, typename... R> KILN_DEVICE void kiln_load_vector(const S* source, R&... out) {
  kiln_vector<S, sizeof...(R)> v;
  kiln_vector_copy<sizeof v>(&v, source, source);
  int lane = 0;
  ((out = kiln_widen(v.element[lane++])), ...);
}
template <int N, typename S> KILN_DEVICE auto kiln_load_vector_at(const S* source, int32_t lane) {
  kiln_vector<S, N> v;
  kiln_vector_copy<sizeof v>(&v, source, source);
  return kiln_widen(v.element[lane]);
}
template <typename S, typename... R> KILN_DEVICE void kiln_store_vector(S* target, R... values) {
  const kiln_vector<S, sizeof...(R)> v = {{kiln_narrow(values, (const S*)nullptr)...}};
  kiln_vector_copy<sizeof v>(target, &v, target);
}

#undef KILN_DEVICE
