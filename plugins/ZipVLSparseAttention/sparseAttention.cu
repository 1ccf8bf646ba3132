// SPDX-License-Identifier: Apache-2.0
// Method steps 6-7 on the GPU.
//   gatheredFlashKernel: causal attention among the kept tokens only, FlashAttention-style (online softmax over
//     key tiles gathered through kept_indices, fp32 accumulation). Causality in the compacted order equals
//     causality in the original order because kept_indices is ascending. Cost ~ p^2, not n^2.
//   compactKvKernel: the evicted cache, K[T] and V[T] first, zeros after.
// Rows outside T keep the zeros of a memset: their hidden state passes through the residual stream unchanged.
#include "../ZipVLTokenSelect/tokenSelectInternal.cuh"
#include "../common/zipvlCudaUtils.cuh"
#include "../common/zipvlStatus.h"
#include "sparseAttentionKernels.h"

#include <cmath>

namespace zipvl
{
namespace kernels
{
namespace
{

constexpr int32_t kWarps = 8;
constexpr int32_t kRowsPerWarp = 4;
constexpr int32_t kQueriesPerBlock = kWarps * kRowsPerWarp;
constexpr int32_t kKeysPerTile = kWarp; // one key per lane for the scores

//! sQ (kQueriesPerBlock x d), sK (kKeysPerTile x (d+1)), sV (kKeysPerTile x d), sP (kQueriesPerBlock x 32).
size_t flashSmemBytes(int32_t d)
{
    return sizeof(float) * (kQueriesPerBlock * d + kKeysPerTile * (d + 1) + kKeysPerTile * d + kQueriesPerBlock * kWarp);
}

__device__ __forceinline__ int32_t keptPos(int32_t const* idx, int32_t i, int32_t n)
{
    return min(max(idx[i], 0), n - 1); // a contract violation gives garbage, never an out-of-bounds access
}

// grid (ceil(n / kQueriesPerBlock), H, B); block i-tile covers compacted queries [i0, i0 + 32).
// kChunks = head-dim columns per lane / 32: each lane accumulates columns lane, lane + 32, ...
template <typename T, int32_t kChunks>
__global__ void __launch_bounds__(kWarps* kWarp) gatheredFlashKernel(T const* q, T const* k, T const* v,
    int32_t const* keptIndices, int32_t const* keptCount, int32_t H, int32_t Hkv, int32_t n, int32_t d,
    float scaling, T* out)
{
    extern __shared__ float smem[];
    float* sQ = smem;
    float* sK = sQ + kQueriesPerBlock * d;
    float* sV = sK + kKeysPerTile * (d + 1);
    float* sP = sV + kKeysPerTile * d;
    int32_t const b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * kQueriesPerBlock;
    int32_t const count = min(max(keptCount[b], 0), n);
    if (i0 >= count)
    {
        return; // block-uniform: this tile holds no kept query
    }
    int32_t const warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    int32_t const hk = h / (H / Hkv);
    int32_t const iLast = min(i0 + kQueriesPerBlock, count) - 1;
    int32_t const* idx = keptIndices + static_cast<int64_t>(b) * n;
    T const* qHead = q + (static_cast<int64_t>(b) * H + h) * n * d;
    T const* kHead = k + (static_cast<int64_t>(b) * Hkv + hk) * n * d;
    T const* vHead = v + (static_cast<int64_t>(b) * Hkv + hk) * n * d;

    for (int32_t e = threadIdx.x; e < kQueriesPerBlock * d; e += blockDim.x)
    {
        int32_t const r = e / d, c = e - r * d, i = i0 + r;
        sQ[e] = i <= iLast ? toFloat(qHead[static_cast<int64_t>(keptPos(idx, i, n)) * d + c]) : 0.0f;
    }
    float runMax[kRowsPerWarp], runSum[kRowsPerWarp], acc[kRowsPerWarp][kChunks];
#pragma unroll
    for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
    {
        runMax[rr] = -INFINITY;
        runSum[rr] = 0.0f;
#pragma unroll
        for (int32_t ch = 0; ch < kChunks; ++ch)
        {
            acc[rr][ch] = 0.0f;
        }
    }
    for (int32_t j0 = 0; j0 <= iLast; j0 += kKeysPerTile)
    {
        __syncthreads(); // previous tile consumed (and sQ written)
        for (int32_t e = threadIdx.x; e < kKeysPerTile * d; e += blockDim.x)
        {
            int32_t const t = e / d, c = e - t * d, j = j0 + t;
            bool const live = j <= iLast;
            int64_t const src = live ? static_cast<int64_t>(keptPos(idx, j, n)) * d + c : 0;
            sK[t * (d + 1) + c] = live ? toFloat(kHead[src]) : 0.0f;
            sV[t * d + c] = live ? toFloat(vHead[src]) : 0.0f;
        }
        __syncthreads();
        int32_t const j = j0 + lane;
        float const* sKlane = sK + lane * (d + 1);
#pragma unroll
        for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
        {
            int32_t const row = warp * kRowsPerWarp + rr, i = i0 + row;
            float const* sQrow = sQ + row * d;
            float s = 0.0f;
            for (int32_t c = 0; c < d; ++c)
            {
                s = fmaf(sQrow[c], sKlane[c], s);
            }
            float const sc = (i <= iLast && j <= i) ? __fmul_rn(s, scaling) : -INFINITY;
            float const newMax = fmaxf(runMax[rr], warpMax(sc));
            float p = 0.0f, alpha = 1.0f;
            if (newMax != -INFINITY) // warp-uniform; -inf only for padding rows
            {
                p = expf(sc - newMax);
                alpha = expf(runMax[rr] - newMax);
            }
            runSum[rr] = runSum[rr] * alpha + warpSum(p);
            runMax[rr] = newMax;
            sP[row * kWarp + lane] = p;
#pragma unroll
            for (int32_t ch = 0; ch < kChunks; ++ch)
            {
                acc[rr][ch] *= alpha;
            }
        }
        __syncwarp();
        for (int32_t t = 0; t < kKeysPerTile; ++t)
        {
#pragma unroll
            for (int32_t ch = 0; ch < kChunks; ++ch)
            {
                int32_t const c = lane + ch * kWarp;
                float const vc = c < d ? sV[t * d + c] : 0.0f;
#pragma unroll
                for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
                {
                    acc[rr][ch] = fmaf(sP[(warp * kRowsPerWarp + rr) * kWarp + t], vc, acc[rr][ch]);
                }
            }
        }
    }
#pragma unroll
    for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
    {
        int32_t const i = i0 + warp * kRowsPerWarp + rr;
        if (i <= iLast)
        {
            float const inv = 1.0f / runSum[rr];
            T* o = out + ((static_cast<int64_t>(b) * H + h) * n + keptPos(idx, i, n)) * d;
#pragma unroll
            for (int32_t ch = 0; ch < kChunks; ++ch)
            {
                int32_t const c = lane + ch * kWarp;
                if (c < d)
                {
                    o[c] = fromFloat<T>(acc[rr][ch] * inv);
                }
            }
        }
    }
}

// grid (n, H_kv, B): slot i of the compacted cache is K/V at kept position i, or zeros past the count.
template <typename T>
__global__ void compactKvKernel(T const* k, T const* v, int32_t const* keptIndices, int32_t const* keptCount,
    int32_t Hkv, int32_t n, int32_t d, T* kOut, T* vOut)
{
    int32_t const i = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    int32_t const count = min(max(keptCount[b], 0), n);
    int64_t const head = (static_cast<int64_t>(b) * Hkv + hk) * n;
    int64_t const dst = (head + i) * d;
    if (i < count)
    {
        int64_t const src = (head + keptPos(keptIndices + static_cast<int64_t>(b) * n, i, n)) * d;
        for (int32_t c = threadIdx.x; c < d; c += blockDim.x)
        {
            kOut[dst + c] = k[src + c];
            vOut[dst + c] = v[src + c];
        }
    }
    else
    {
        for (int32_t c = threadIdx.x; c < d; c += blockDim.x)
        {
            kOut[dst + c] = fromFloat<T>(0.0f);
            vOut[dst + c] = fromFloat<T>(0.0f);
        }
    }
}

template <typename T, int32_t kChunks>
cudaError_t launchFlash(SparseAttentionParams const& p, cudaStream_t stream)
{
    size_t const smem = flashSmemBytes(p.headDim);
    cudaError_t err = cudaFuncSetAttribute(
        gatheredFlashKernel<T, kChunks>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess)
    {
        return err;
    }
    dim3 const grid((p.seqLen + kQueriesPerBlock - 1) / kQueriesPerBlock, p.numHeads, p.batch);
    gatheredFlashKernel<T, kChunks><<<grid, kWarps * kWarp, smem, stream>>>(static_cast<T const*>(p.query),
        static_cast<T const*>(p.key), static_cast<T const*>(p.value), p.keptIndices, p.keptCount, p.numHeads,
        p.numKvHeads, p.seqLen, p.headDim, p.scaling, static_cast<T*>(p.attnOut));
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchSparseAttentionT(SparseAttentionParams const& p, cudaStream_t stream)
{
    size_t const outBytes = static_cast<size_t>(p.batch) * p.numHeads * p.seqLen * p.headDim * sizeof(T);
    cudaError_t err = cudaMemsetAsync(p.attnOut, 0, outBytes, stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    // Register budget: the accumulator holds kRowsPerWarp x kChunks floats per lane.
    err = p.headDim <= 64 ? launchFlash<T, 2>(p, stream)
        : p.headDim <= 128 ? launchFlash<T, 4>(p, stream)
                           : launchFlash<T, 8>(p, stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    dim3 const grid(p.seqLen, p.numKvHeads, p.batch);
    int32_t const threads = p.headDim >= 128 ? 128 : ((p.headDim + kWarp - 1) / kWarp) * kWarp;
    compactKvKernel<T><<<grid, threads, 0, stream>>>(static_cast<T const*>(p.key), static_cast<T const*>(p.value),
        p.keptIndices, p.keptCount, p.numKvHeads, p.seqLen, p.headDim, static_cast<T*>(p.keyCompact),
        static_cast<T*>(p.valueCompact));
    return cudaGetLastError();
}

} // namespace

int32_t checkSparseAttention(SparseAttentionParams const& p) noexcept
{
    if (!p.query || !p.key || !p.value || !p.keptIndices || !p.keptCount || !p.attnOut || !p.keyCompact
        || !p.valueCompact || !std::isfinite(p.scaling))
    {
        return ZIPVL_STATUS_BAD_ARGUMENT;
    }
    if (p.batch < 1 || p.numHeads < 1 || p.numKvHeads < 1 || p.numHeads % p.numKvHeads != 0 || p.seqLen < 1
        || p.headDim < 1)
    {
        return ZIPVL_STATUS_BAD_SHAPE;
    }
    if (p.headDim > kMaxHeadDim || p.batch > 65535 || p.numHeads > 65535)
    {
        return ZIPVL_STATUS_UNSUPPORTED;
    }
    return ZIPVL_STATUS_OK;
}

int32_t launchSparseAttention(SparseAttentionParams const& p, cudaStream_t stream) noexcept
{
    int32_t const status = checkSparseAttention(p);
    if (status != ZIPVL_STATUS_OK)
    {
        return status;
    }
    switch (p.dtype)
    {
    case DType::kFLOAT32: return cudaStatus(launchSparseAttentionT<float>(p, stream));
    case DType::kFLOAT16: return cudaStatus(launchSparseAttentionT<__half>(p, stream));
    case DType::kBFLOAT16: return cudaStatus(launchSparseAttentionT<__nv_bfloat16>(p, stream));
    }
    return ZIPVL_STATUS_BAD_ARGUMENT;
}

} // namespace kernels
} // namespace zipvl
