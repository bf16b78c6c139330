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
// casts, and the thread model. A block's threads are OS threads that run concurrently; blocks run
// one after another, so a function-static array serves as the block's `__shared__` memory (and
// launches are serialised). `__syncthreads` and the warp shuffles are counting barriers on one
// mutex per block: ThreadSanitizer sees the order they make (no false races), and a barrier that
// not every thread reaches is reported as a deadlock instead of hanging (see `kiln_emu::wait`).
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <math.h>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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
};

inline thread_local Block* block = nullptr;
inline thread_local int lane = 0, warp = 0;

inline void fail(Block& b, const std::string& why) {
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
  while (generation == seen && b.failure.empty()) {
    if (wake.wait_for(lock, b.timeout) == std::cv_status::timeout && generation == seen && b.failure.empty())
      fail(b, std::string("a thread waited at ") + where + " for longer than the emulator's timeout (" +
                  std::to_string(b.timeout.count()) + " s): a thread of the block may loop forever");
  }
  if (!b.failure.empty()) throw Abort{};
}

inline void sync_block() {
  Block& b = *block;
  std::unique_lock<std::mutex> lock(b.mutex);
  if (!b.failure.empty()) throw Abort{};
  if (++b.arrived == b.threads) {
    b.waiting_block -= b.arrived - 1;
    b.arrived = 0;
    ++b.generation;
    b.wake.notify_all();
    return;
  }
  wait(b, lock, b.wake, b.generation, b.generation, b.waiting_block, "__syncthreads");
}

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
    std::unique_lock<std::mutex> lock(b.mutex);
    if (++b.finished == b.threads) {  // the block is done: the next one starts from fresh barriers
      b.finished = b.arrived = 0;
      for (auto& w : b.warps) w->arrived = 0;
      b.index = uint3{(unsigned)((i + 1) % grid.x), (unsigned)((i + 1) / grid.x % grid.y),
                      (unsigned)((i + 1) / grid.x / grid.y)};
      ++b.block_generation;
      b.next_block.notify_all();
      continue;
    }
    check_deadlock(b);
    const uint64_t seen = b.block_generation;
    while (b.block_generation == seen && b.failure.empty()) b.next_block.wait(lock);
    if (!b.failure.empty()) return;
  }
}

// Runs `body` (the kernel called on a launch's arguments) on `grid` x `block` threads; 0, or 1
// with the reason in `error`. Launches are serialised: shared memory is function-static.
inline int launch(const char* kernel, void (*body)(void**), void** args, const unsigned* dims, double timeout_s,
                  char* error, int error_size) {
  static std::mutex one_launch_at_a_time;
  std::lock_guard<std::mutex> serial(one_launch_at_a_time);
  const dim3 grid{dims[0], dims[1], dims[2]}, shape{dims[3], dims[4], dims[5]};
  Block b;
  b.kernel = kernel;
  b.threads = (int)(shape.x * shape.y * shape.z);
  b.timeout = std::chrono::duration<double>(timeout_s);
  for (int first = 0; first < b.threads; first += 32) {
    b.warps.push_back(std::make_unique<Warp>());
    b.warps.back()->lanes = std::min(32, b.threads - first);
  }
  std::vector<std::thread> threads;
  threads.reserve(b.threads);
  for (unsigned z = 0; z < shape.z; ++z)
    for (unsigned y = 0; y < shape.y; ++y)
      for (unsigned x = 0; x < shape.x; ++x)
        threads.emplace_back(run_thread, std::ref(b), body, args, uint3{x, y, z}, grid, shape);
  for (auto& t : threads) t.join();
  if (b.failure.empty()) return 0;
  std::snprintf(error, (size_t)error_size, "%s", b.failure.c_str());
  return 1;
}

}  // namespace kiln_emu

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
// bytes of u8(a) * s8(b), wrapping in i32 (unsigned arithmetic: no signed overflow).
KILN_DEVICE int32_t kiln_dot4_u8s8(int32_t acc, int32_t a, int32_t b) {
  uint32_t sum = (uint32_t)acc;
  for (int k = 0; k < 4; ++k) {
    int32_t ua = (int32_t)(((uint32_t)a >> (8 * k)) & 0xFFu);
    int32_t sb = (int32_t)(int8_t)(((uint32_t)b >> (8 * k)) & 0xFFu);
    sum += (uint32_t)(ua * sb);
  }
  return (int32_t)sum;
}

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

#undef KILN_DEVICE
