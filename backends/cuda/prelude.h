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
// Only the device implementation exists so far. The host-emulation issue (issue 9) adds a host
// implementation of every helper below, with the same semantics, under
// `#ifndef __CUDACC_RTC__` (host C++ compiler: threads of a block as OS threads), so that the
// same generated source runs on the CPU; keep each helper small and self-contained for that.

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
#else
#include <cstdint>
// The host implementation goes here (issue 9): __half/__nv_bfloat16 storage types, fmaf,
// rintf, ... and the emulated block/thread indices and __syncthreads.
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

#undef KILN_DEVICE
