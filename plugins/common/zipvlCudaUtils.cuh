// SPDX-License-Identifier: Apache-2.0
//! Device helpers shared by the zipvl kernels: dtype conversion, warp reductions, sortable float keys.
#ifndef ZIPVL_CUDA_UTILS_CUH
#define ZIPVL_CUDA_UTILS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "zipvlDType.h"

namespace zipvl
{
namespace kernels
{

constexpr int32_t kWarp = 32;
//! Largest head dimension the kernels support (registers and shared memory are sized for it).
constexpr int32_t kMaxHeadDim = 256;

__device__ __forceinline__ float toFloat(float x)
{
    return x;
}
__device__ __forceinline__ float toFloat(__half x)
{
    return __half2float(x);
}
__device__ __forceinline__ float toFloat(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float x);
template <>
__device__ __forceinline__ float fromFloat<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warpMax(float v)
{
#pragma unroll
    for (int32_t o = kWarp / 2; o > 0; o /= 2)
    {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int32_t o = kWarp / 2; o > 0; o /= 2)
    {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

//! Maps a float to uint32 so that unsigned order equals float order (-0 and +0 folded together).
__host__ __device__ __forceinline__ uint32_t orderedBits(float x)
{
    uint32_t u;
    x = (x == 0.0f) ? 0.0f : x;
    memcpy(&u, &x, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

//! Inverse of orderedBits.
__host__ __device__ __forceinline__ float fromOrderedBits(uint32_t u)
{
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float x;
    memcpy(&x, &u, sizeof(x));
    return x;
}

//! Bits needed to hold values in [0, count): 0 for count <= 1.
__host__ __device__ __forceinline__ int32_t bitsFor(int64_t count)
{
    int32_t bits = 0;
    while ((int64_t{1} << bits) < count)
    {
        ++bits;
    }
    return bits;
}

//! Number of probes strictly before position j (lower bound in the ascending probe list).
__device__ __forceinline__ int32_t probesBefore(int32_t const* probes, int32_t m, int32_t j)
{
    int32_t lo = 0, hi = m;
    while (lo < hi)
    {
        int32_t const mid = (lo + hi) / 2;
        if (probes[mid] < j)
        {
            lo = mid + 1;
        }
        else
        {
            hi = mid;
        }
    }
    return lo;
}

//! Rounds a byte count up to the 256-byte alignment the workspace slices use.
__host__ __device__ __forceinline__ size_t alignUp(size_t bytes)
{
    return (bytes + 255) & ~size_t{255};
}

} // namespace kernels
} // namespace zipvl

#endif // ZIPVL_CUDA_UTILS_CUH
