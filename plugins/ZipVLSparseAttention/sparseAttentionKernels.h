// SPDX-License-Identifier: Apache-2.0
//! Host API of the ZipVLSparseAttention CUDA kernels (method steps 6-7). No TensorRT types.
#ifndef ZIPVL_SPARSE_ATTENTION_KERNELS_H
#define ZIPVL_SPARSE_ATTENTION_KERNELS_H

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/zipvlDType.h"

namespace zipvl
{
namespace kernels
{

//! One ZipVLSparseAttention call. All pointers are device pointers; tensors are contiguous (linear format).
struct SparseAttentionParams
{
    void const* query{};            //!< (B, H, n, d) of `dtype`
    void const* key{};              //!< (B, H_kv, n, d)
    void const* value{};            //!< (B, H_kv, n, d)
    int32_t const* keptIndices{};   //!< (B, n) ascending kept positions, first keptCount[b] valid
    int32_t const* keptCount{};     //!< (B,) p per sequence
    DType dtype{DType::kFLOAT32};   //!< element type of query, key, value and the outputs
    int32_t batch{};                //!< B
    int32_t numHeads{};             //!< H
    int32_t numKvHeads{};           //!< H_kv (H % H_kv == 0)
    int32_t seqLen{};               //!< n
    int32_t headDim{};              //!< d <= kMaxHeadDim
    float scaling{};                //!< softmax scale
    void* attnOut{};                //!< out (B, H, n, d): causal attention over the kept tokens, zero elsewhere
    void* keyCompact{};             //!< out (B, H_kv, n, d): K of the kept tokens first (ascending), then zeros
    void* valueCompact{};           //!< out (B, H_kv, n, d): same for V
};

//! Host-side checks of the dimensions; returns a ZIPVL_STATUS_* code.
int32_t checkSparseAttention(SparseAttentionParams const& p) noexcept;

//! Enqueues zero-fill, gathered causal attention and K/V compaction on `stream` (no workspace). Returns a
//! ZIPVL_STATUS_* code; on ZIPVL_STATUS_CUDA see lastCudaError() (tokenSelectKernels.h).
int32_t launchSparseAttention(SparseAttentionParams const& p, cudaStream_t stream) noexcept;

} // namespace kernels
} // namespace zipvl

#endif // ZIPVL_SPARSE_ATTENTION_KERNELS_H
