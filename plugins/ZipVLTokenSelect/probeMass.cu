// SPDX-License-Identifier: Apache-2.0
// Method steps 2-3 on the GPU without an n x n (or even H x m x n) buffer:
//   pass 1 (probeRowStatsKernel): per probe row, the softmax max and denominator by an online sweep over its keys;
//   pass 2 (probeMassKernel): per block of 32 keys, the column sum of the normalised probe attention.
// Pass 2 owns its keys, so the mass is written once, without atomics, in a fixed order: the result is
// deterministic. The GQA group is folded into the probe rows of each KV head (K is never repeated).
#include "../common/zipvlCudaUtils.cuh"
#include "tokenSelectInternal.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace zipvl
{
namespace kernels
{
namespace
{

constexpr int32_t kWarps = 8;                          // warps per block
constexpr int32_t kRowsPerWarp = 4;                    // probe rows a warp scores at once (reuses each K load)
constexpr int32_t kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int32_t kKeysPerTile = kWarp;                // one key per lane

//! Shared memory of both passes: Q rows (kRowsPerBlock x d), one K tile (kKeysPerTile x (d+1)), warp partials.
size_t probeSmemBytes(int32_t d)
{
    return sizeof(float) * (kRowsPerBlock * d + kKeysPerTile * (d + 1) + kWarps * kWarp);
}

__device__ __forceinline__ int32_t clampPos(int32_t pos, int32_t n)
{
    return min(max(pos, 0), n - 1); // a contract violation gives garbage, never an out-of-bounds read
}

// Row r (of the g*m rows of one KV head) is probe r / g of group head r % g: probe-major, so the rows of one block
// have nearby positions and similar key ranges.
template <typename T>
__device__ void loadProbeRows(T const* q, int32_t const* probesB, int32_t b, int32_t hk, int32_t r0, int32_t H,
    int32_t g, int32_t n, int32_t d, int32_t rows, float* sQ)
{
    for (int32_t e = threadIdx.x; e < kRowsPerBlock * d; e += blockDim.x)
    {
        int32_t const rr = e / d, c = e - rr * d, r = r0 + rr;
        float x = 0.0f;
        if (r < rows)
        {
            int32_t const h = hk * g + r % g;
            int32_t const pos = clampPos(probesB[r / g], n);
            x = toFloat(q[((static_cast<int64_t>(b) * H + h) * n + pos) * d + c]);
        }
        sQ[e] = x;
    }
}

template <typename T>
__device__ void loadKeyTile(T const* kHead, int32_t j0, int32_t n, int32_t d, float* sK)
{
    for (int32_t e = threadIdx.x; e < kKeysPerTile * d; e += blockDim.x)
    {
        int32_t const t = e / d, c = e - t * d, j = j0 + t;
        sK[t * (d + 1) + c] = j < n ? toFloat(kHead[static_cast<int64_t>(j) * d + c]) : 0.0f;
    }
}

//! out[r] = q_r . k for the warp's kRowsPerWarp rows; k is this lane's key row (stride d+1: no bank conflicts).
__device__ __forceinline__ void dotRows(float const* sQw, float const* sKlane, int32_t d, float (&out)[kRowsPerWarp])
{
#pragma unroll
    for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
    {
        out[rr] = 0.0f;
    }
    for (int32_t c = 0; c < d; ++c)
    {
        float const kc = sKlane[c];
#pragma unroll
        for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
        {
            out[rr] = fmaf(sQw[rr * d + c], kc, out[rr]);
        }
    }
}

// grid (ceil(g*m / kRowsPerBlock), H_kv, B): online max / denominator of each probe row over keys j <= pos.
template <typename T>
__global__ void __launch_bounds__(kWarps* kWarp) probeRowStatsKernel(T const* q, T const* k, int32_t const* probes,
    int32_t H, int32_t Hkv, int32_t n, int32_t d, int32_t m, float scaling, float* rowMax, float* rowInvSum)
{
    extern __shared__ float smem[];
    float* sQ = smem;
    float* sK = sQ + kRowsPerBlock * d;
    int32_t const b = blockIdx.z, hk = blockIdx.y, g = H / Hkv, rows = g * m;
    int32_t const r0 = blockIdx.x * kRowsPerBlock;
    int32_t const warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    int32_t const* probesB = probes + static_cast<int64_t>(b) * m;
    T const* kHead = k + (static_cast<int64_t>(b) * Hkv + hk) * n * d;

    loadProbeRows(q, probesB, b, hk, r0, H, g, n, d, rows, sQ);
    int32_t pos[kRowsPerWarp];
    float runMax[kRowsPerWarp], runSum[kRowsPerWarp];
#pragma unroll
    for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
    {
        int32_t const r = r0 + warp * kRowsPerWarp + rr;
        pos[rr] = r < rows ? clampPos(probesB[r / g], n) : -1; // -1: padding row, sees nothing
        runMax[rr] = -INFINITY;
        runSum[rr] = 0.0f;
    }
    int32_t const lastPos = clampPos(probesB[(min(r0 + kRowsPerBlock, rows) - 1) / g], n);
    for (int32_t j0 = 0; j0 <= lastPos; j0 += kKeysPerTile)
    {
        __syncthreads(); // the previous tile is consumed (and sQ is written on the first pass)
        loadKeyTile(kHead, j0, n, d, sK);
        __syncthreads();
        float s[kRowsPerWarp];
        dotRows(sQ + warp * kRowsPerWarp * d, sK + lane * (d + 1), d, s);
        int32_t const j = j0 + lane;
#pragma unroll
        for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
        {
            // __fmul_rn: no FMA contraction, so both passes see bit-identical scores.
            float const sc = j <= pos[rr] ? __fmul_rn(s[rr], scaling) : -INFINITY;
            float const newMax = fmaxf(runMax[rr], warpMax(sc));
            if (newMax == -INFINITY)
            {
                continue; // warp-uniform: nothing visible yet
            }
            float const tileSum = warpSum(expf(sc - newMax));
            runSum[rr] = runSum[rr] * expf(runMax[rr] - newMax) + tileSum;
            runMax[rr] = newMax;
        }
    }
    if (lane == 0)
    {
#pragma unroll
        for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
        {
            int32_t const r = r0 + warp * kRowsPerWarp + rr;
            if (r < rows)
            {
                int64_t const idx = (static_cast<int64_t>(b) * Hkv + hk) * rows + r;
                rowMax[idx] = runMax[rr];
                rowInvSum[idx] = 1.0f / runSum[rr];
            }
        }
    }
}

// grid (ceil(n / kKeysPerTile), B): mass[b, j] = sum over KV heads, probe rows r with pos_r >= j of
// exp(q_r . k_j * scaling - max_r) / sum_r. Each lane owns one key; the 8 warp partials are added in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kWarps* kWarp) probeMassKernel(T const* q, T const* k, int32_t const* probes,
    int32_t H, int32_t Hkv, int32_t n, int32_t d, int32_t m, float scaling, float const* rowMax,
    float const* rowInvSum, float* mass)
{
    extern __shared__ float smem[];
    float* sQ = smem;
    float* sK = sQ + kRowsPerBlock * d;
    float* sPart = sK + kKeysPerTile * (d + 1);
    int32_t const b = blockIdx.y, j0 = blockIdx.x * kKeysPerTile, g = H / Hkv, rows = g * m;
    int32_t const warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, j = j0 + lane;
    int32_t const* probesB = probes + static_cast<int64_t>(b) * m;
    // Probes before j0 see none of this block's keys: skip their rows.
    int32_t const rStart = probesBefore(probesB, m, j0) * g;

    float acc = 0.0f;
    for (int32_t hk = 0; hk < Hkv; ++hk)
    {
        __syncthreads();
        loadKeyTile(k + (static_cast<int64_t>(b) * Hkv + hk) * n * d, j0, n, d, sK);
        float const* maxHead = rowMax + (static_cast<int64_t>(b) * Hkv + hk) * rows;
        float const* invHead = rowInvSum + (static_cast<int64_t>(b) * Hkv + hk) * rows;
        for (int32_t r0 = rStart; r0 < rows; r0 += kRowsPerBlock)
        {
            __syncthreads(); // sQ is free (and sK is loaded)
            loadProbeRows(q, probesB, b, hk, r0, H, g, n, d, rows, sQ);
            __syncthreads();
            float s[kRowsPerWarp];
            dotRows(sQ + warp * kRowsPerWarp * d, sK + lane * (d + 1), d, s);
#pragma unroll
            for (int32_t rr = 0; rr < kRowsPerWarp; ++rr)
            {
                int32_t const r = r0 + warp * kRowsPerWarp + rr;
                if (r < rows && j <= clampPos(probesB[r / g], n))
                {
                    acc += expf(__fmul_rn(s[rr], scaling) - maxHead[r]) * invHead[r];
                }
            }
        }
    }
    sPart[warp * kWarp + lane] = acc;
    __syncthreads();
    if (warp == 0 && j < n)
    {
        float total = 0.0f;
        for (int32_t w = 0; w < kWarps; ++w)
        {
            total += sPart[w * kWarp + lane];
        }
        mass[static_cast<int64_t>(b) * n + j] = total;
    }
}

template <typename T>
cudaError_t launchProbeMassT(TokenSelectParams const& p, TokenSelectWorkspace const& ws, cudaStream_t stream)
{
    auto const* q = static_cast<T const*>(p.query);
    auto const* k = static_cast<T const*>(p.key);
    size_t const smem = probeSmemBytes(p.headDim);
    // Above 48 KB (head_dim > 96) the kernels must opt in to the larger shared-memory carve-out.
    cudaError_t err = cudaFuncSetAttribute(
        probeRowStatsKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err == cudaSuccess)
    {
        err = cudaFuncSetAttribute(
            probeMassKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    }
    if (err != cudaSuccess)
    {
        return err;
    }
    int32_t const rows = (p.numHeads / p.numKvHeads) * p.numProbes;
    dim3 const statsGrid((rows + kRowsPerBlock - 1) / kRowsPerBlock, p.numKvHeads, p.batch);
    probeRowStatsKernel<T><<<statsGrid, kWarps * kWarp, smem, stream>>>(q, k, p.probes, p.numHeads, p.numKvHeads,
        p.seqLen, p.headDim, p.numProbes, p.scaling, ws.rowMax, ws.rowInvSum);
    dim3 const massGrid((p.seqLen + kKeysPerTile - 1) / kKeysPerTile, p.batch);
    probeMassKernel<T><<<massGrid, kWarps * kWarp, smem, stream>>>(q, k, p.probes, p.numHeads, p.numKvHeads,
        p.seqLen, p.headDim, p.numProbes, p.scaling, ws.rowMax, ws.rowInvSum, p.mass);
    return cudaGetLastError();
}

} // namespace

cudaError_t launchProbeMass(TokenSelectParams const& p, TokenSelectWorkspace const& ws, cudaStream_t stream)
{
    switch (p.dtype)
    {
    case DType::kFLOAT32: return launchProbeMassT<float>(p, ws, stream);
    case DType::kFLOAT16: return launchProbeMassT<__half>(p, ws, stream);
    case DType::kBFLOAT16: return launchProbeMassT<__nv_bfloat16>(p, ws, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace kernels
} // namespace zipvl
