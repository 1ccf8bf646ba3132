// SPDX-License-Identifier: Apache-2.0
// Method steps 4-5 on the GPU, from the probe mass to the kept positions.
//   count: sort the mass descending (one device-wide radix sort of (batch, ~mass) keys), fp64 block scan per
//          sequence, p = #(prefix < tau * H * m) + 1, clamped to n (exactly the reference's formula);
//   which: sort (batch, ~score, position) keys, so ties go to the lower position without relying on a stable sort;
//          flag the first p of each sequence and compact the flags into ascending positions padded with -1.
// The batch index sits in the top key bits: one device-wide sort serves every sequence (a segmented sort would
// give a single block to a B = 1 prefill).
#include "../common/zipvlCudaUtils.cuh"
#include "../common/zipvlStatus.h"
#include "tokenSelectInternal.cuh"

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

namespace zipvl
{
namespace kernels
{
namespace
{

constexpr int32_t kScanThreads = 1024;
constexpr int32_t kElementwiseThreads = 256;

__global__ void massKeysKernel(float const* mass, int32_t n, int64_t total, uint64_t* keys)
{
    int64_t const i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total)
    {
        uint64_t const b = static_cast<uint64_t>(i / n);
        keys[i] = (b << 32) | static_cast<uint32_t>(~orderedBits(mass[i])); // ~: descending mass
    }
}

// One block per sequence: p = number of descending prefix sums below the threshold, + 1 (reference formula).
__global__ void __launch_bounds__(kScanThreads) adaptiveCountKernel(
    uint64_t const* sortedKeys, int32_t n, double threshold, int32_t* counts)
{
    using Scan = cub::BlockScan<double, kScanThreads>;
    __shared__ typename Scan::TempStorage scanStorage;
    int64_t const base = static_cast<int64_t>(blockIdx.x) * n;
    double carry = 0.0; // identical in every thread
    int32_t below = 0;
    for (int32_t i0 = 0; i0 < n; i0 += kScanThreads)
    {
        int32_t const i = i0 + threadIdx.x;
        double const x = i < n ? static_cast<double>(fromOrderedBits(~static_cast<uint32_t>(sortedKeys[base + i]))) : 0.0;
        double inclusive, chunkTotal;
        Scan(scanStorage).InclusiveSum(x, inclusive, chunkTotal);
        below += __syncthreads_count(i < n && carry + inclusive < threshold); // also frees scanStorage
        carry += chunkTotal;
        if (carry >= threshold)
        {
            break; // every later prefix is carry + (x >= 0) >= threshold: nothing more can count
        }
    }
    if (threadIdx.x == 0)
    {
        counts[blockIdx.x] = min(below + 1, n);
    }
}

__global__ void scoreKeysKernel(float const* mass, int32_t const* probes, int32_t H, int32_t n, int32_t m,
    int32_t indexBits, int64_t total, uint64_t* keys)
{
    int64_t const i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total)
    {
        int64_t const b = i / n;
        int32_t const j = static_cast<int32_t>(i - b * n);
        // c_j = H * (number of probes at or after j): the probe entries that can see key j.
        int32_t const visible = H * (m - probesBefore(probes + b * m, m, j));
        float const score = visible > 0 ? mass[i] / static_cast<float>(visible) : 0.0f;
        uint64_t const desc = static_cast<uint32_t>(~orderedBits(score));
        keys[i] = (static_cast<uint64_t>(b) << (32 + indexBits)) | (desc << indexBits) | static_cast<uint64_t>(j);
    }
}

__global__ void markKeptKernel(
    uint64_t const* sortedKeys, int32_t const* counts, int32_t n, int32_t indexBits, int64_t total, uint8_t* flags)
{
    int64_t const i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total)
    {
        int64_t const b = i / n;
        if (i - b * n < counts[b]) // sorted rank within the sequence < p
        {
            uint64_t const j = sortedKeys[i] & ((uint64_t{1} << indexBits) - 1);
            flags[b * n + static_cast<int64_t>(j)] = 1;
        }
    }
}

// One block per sequence: ascending positions of the flags, then -1; the number of flags is kept_count.
__global__ void __launch_bounds__(kScanThreads) compactKeptKernel(
    uint8_t const* flags, int32_t n, int32_t* keptIndices, int32_t* keptCount)
{
    using Scan = cub::BlockScan<int32_t, kScanThreads>;
    __shared__ typename Scan::TempStorage scanStorage;
    int64_t const base = static_cast<int64_t>(blockIdx.x) * n;
    int32_t written = 0; // identical in every thread
    for (int32_t i0 = 0; i0 < n; i0 += kScanThreads)
    {
        int32_t const j = i0 + threadIdx.x;
        int32_t const flag = j < n ? flags[base + j] : 0;
        int32_t offset, chunkTotal;
        Scan(scanStorage).ExclusiveSum(flag, offset, chunkTotal);
        if (flag)
        {
            keptIndices[base + written + offset] = j;
        }
        written += chunkTotal;
        __syncthreads(); // scanStorage is reused
    }
    for (int32_t t = written + threadIdx.x; t < n; t += kScanThreads)
    {
        keptIndices[base + t] = -1;
    }
    if (threadIdx.x == 0)
    {
        keptCount[blockIdx.x] = written;
    }
}

//! Sorts `total` keys on bits [0, endBit) ascending; returns the buffer holding the result (or nullptr on error).
uint64_t* sortKeys(TokenSelectWorkspace const& ws, int64_t total, int32_t endBit, cudaStream_t stream, int32_t& status)
{
    cub::DoubleBuffer<uint64_t> keys(ws.keysA, ws.keysB);
    size_t needed = 0;
    cudaError_t err = cub::DeviceRadixSort::SortKeys(nullptr, needed, keys, total, 0, endBit, stream);
    if (err == cudaSuccess && needed > ws.cubBytes)
    {
        status = ZIPVL_STATUS_WORKSPACE;
        return nullptr;
    }
    if (err == cudaSuccess)
    {
        size_t bytes = ws.cubBytes;
        err = cub::DeviceRadixSort::SortKeys(ws.cubTemp, bytes, keys, total, 0, endBit, stream);
    }
    status = cudaStatus(err);
    return err == cudaSuccess ? keys.Current() : nullptr;
}

uint32_t gridFor(int64_t total)
{
    return static_cast<uint32_t>((total + kElementwiseThreads - 1) / kElementwiseThreads);
}

} // namespace

int32_t launchAdaptiveSelect(TokenSelectParams const& p, TokenSelectWorkspace const& ws, cudaStream_t stream)
{
    int32_t const B = p.batch, n = p.seqLen;
    int64_t const total = static_cast<int64_t>(B) * n;
    int32_t status = ZIPVL_STATUS_OK;
    if (p.tau >= 1.0f)
    {
        // p = n: every token is kept (dense attention), no sort needed.
        cudaError_t err = cudaMemsetAsync(ws.flags, 1, total, stream);
        if (err != cudaSuccess)
        {
            return cudaStatus(err);
        }
    }
    else
    {
        int32_t const batchBits = bitsFor(B);
        massKeysKernel<<<gridFor(total), kElementwiseThreads, 0, stream>>>(p.mass, n, total, ws.keysA);
        uint64_t const* sortedMass = sortKeys(ws, total, 32 + batchBits, stream, status);
        if (sortedMass == nullptr)
        {
            return status;
        }
        // Every probe row of every head sums to 1: the total mass is H * m.
        double const threshold = static_cast<double>(p.tau) * p.numHeads * p.numProbes;
        adaptiveCountKernel<<<B, kScanThreads, 0, stream>>>(sortedMass, n, threshold, ws.counts);

        int32_t const indexBits = bitsFor(n);
        scoreKeysKernel<<<gridFor(total), kElementwiseThreads, 0, stream>>>(
            p.mass, p.probes, p.numHeads, n, p.numProbes, indexBits, total, ws.keysA);
        uint64_t const* sortedScore = sortKeys(ws, total, batchBits + 32 + indexBits, stream, status);
        if (sortedScore == nullptr)
        {
            return status;
        }
        cudaError_t err = cudaMemsetAsync(ws.flags, 0, total, stream);
        if (err != cudaSuccess)
        {
            return cudaStatus(err);
        }
        markKeptKernel<<<gridFor(total), kElementwiseThreads, 0, stream>>>(
            sortedScore, ws.counts, n, indexBits, total, ws.flags);
    }
    compactKeptKernel<<<B, kScanThreads, 0, stream>>>(ws.flags, n, p.keptIndices, p.keptCount);
    return cudaStatus(cudaGetLastError());
}

} // namespace kernels
} // namespace zipvl
