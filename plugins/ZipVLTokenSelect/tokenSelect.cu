// SPDX-License-Identifier: Apache-2.0
// ZipVLTokenSelect entry point: checks, workspace layout, and the two stages (probeMass.cu, adaptiveSelect.cu).
#include "../common/zipvlCudaUtils.cuh"
#include "../common/zipvlStatus.h"
#include "tokenSelectInternal.cuh"

#include <cmath>

namespace zipvl
{
namespace kernels
{
namespace
{

thread_local cudaError_t tLastCudaError = cudaSuccess;

//! CUB's onesweep radix sort with double buffering needs bins + lookback + counters, well under one byte per key
//! plus a few KB; 1 MB + 1 byte per key is a safe bound that needs no device query (TensorRT may ask for the
//! workspace size on a machine without a GPU). launchAdaptiveSelect checks the real need before sorting.
size_t cubTempBound(int64_t numKeys)
{
    return (size_t{1} << 20) + static_cast<size_t>(numKeys);
}

//! Slices in order: rowMax, rowInvSum, keysA, keysB, counts, flags, cubTemp (each 256-byte aligned).
size_t carve(int32_t batch, int32_t numHeads, int32_t seqLen, int32_t numProbes, char* base, TokenSelectWorkspace* ws)
{
    int64_t const rows = static_cast<int64_t>(batch) * numHeads * numProbes; // B * H_kv * g * m
    int64_t const keys = static_cast<int64_t>(batch) * seqLen;
    size_t const sizes[] = {alignUp(rows * sizeof(float)), alignUp(rows * sizeof(float)),
        alignUp(keys * sizeof(uint64_t)), alignUp(keys * sizeof(uint64_t)), alignUp(batch * sizeof(int32_t)),
        alignUp(keys * sizeof(uint8_t)), alignUp(cubTempBound(keys))};
    size_t offset = 0;
    void* slices[7];
    for (int32_t i = 0; i < 7; ++i)
    {
        slices[i] = base ? base + offset : nullptr;
        offset += sizes[i];
    }
    if (ws)
    {
        ws->rowMax = static_cast<float*>(slices[0]);
        ws->rowInvSum = static_cast<float*>(slices[1]);
        ws->keysA = static_cast<uint64_t*>(slices[2]);
        ws->keysB = static_cast<uint64_t*>(slices[3]);
        ws->counts = static_cast<int32_t*>(slices[4]);
        ws->flags = static_cast<uint8_t*>(slices[5]);
        ws->cubTemp = slices[6];
        ws->cubBytes = sizes[6];
    }
    return offset + 256; // slack to align an unaligned base
}

} // namespace

int32_t cudaStatus(cudaError_t err) noexcept
{
    if (err != cudaSuccess)
    {
        tLastCudaError = err;
        return ZIPVL_STATUS_CUDA;
    }
    return ZIPVL_STATUS_OK;
}

cudaError_t lastCudaError() noexcept
{
    return tLastCudaError;
}

size_t tokenSelectWorkspaceSize(int32_t batch, int32_t numHeads, int32_t seqLen, int32_t numProbes) noexcept
{
    return carve(batch, numHeads, seqLen, numProbes, nullptr, nullptr);
}

int32_t checkTokenSelect(TokenSelectParams const& p) noexcept
{
    if (!p.query || !p.key || !p.probes || !p.keptIndices || !p.keptCount || !p.mass || !(p.tau > 0.0f)
        || !(p.tau <= 1.0f) || !std::isfinite(p.scaling))
    {
        return ZIPVL_STATUS_BAD_ARGUMENT;
    }
    if (p.batch < 1 || p.numHeads < 1 || p.numKvHeads < 1 || p.numHeads % p.numKvHeads != 0 || p.seqLen < 1
        || p.headDim < 1 || p.numProbes < 1 || p.numProbes > p.seqLen)
    {
        return ZIPVL_STATUS_BAD_SHAPE;
    }
    // The score sort key packs (batch, score, position) into 64 bits; grids use blockIdx.y/z for heads and batch.
    if (p.headDim > kMaxHeadDim || bitsFor(p.batch) + 32 + bitsFor(p.seqLen) > 64 || p.batch > 65535
        || p.numKvHeads > 65535)
    {
        return ZIPVL_STATUS_UNSUPPORTED;
    }
    return ZIPVL_STATUS_OK;
}

int32_t launchTokenSelect(
    TokenSelectParams const& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept
{
    int32_t status = checkTokenSelect(p);
    if (status != ZIPVL_STATUS_OK)
    {
        return status;
    }
    size_t const needed = tokenSelectWorkspaceSize(p.batch, p.numHeads, p.seqLen, p.numProbes);
    if (workspace == nullptr || workspaceBytes < needed)
    {
        return ZIPVL_STATUS_WORKSPACE;
    }
    auto const addr = reinterpret_cast<uintptr_t>(workspace);
    char* base = static_cast<char*>(workspace) + (alignUp(addr) - addr);
    TokenSelectWorkspace ws;
    carve(p.batch, p.numHeads, p.seqLen, p.numProbes, base, &ws);
    status = cudaStatus(launchProbeMass(p, ws, stream));
    if (status != ZIPVL_STATUS_OK)
    {
        return status;
    }
    return launchAdaptiveSelect(p, ws, stream);
}

} // namespace kernels
} // namespace zipvl
