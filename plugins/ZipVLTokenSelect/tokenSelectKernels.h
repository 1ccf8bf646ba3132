// SPDX-License-Identifier: Apache-2.0
//! Host API of the ZipVLTokenSelect CUDA kernels (method steps 2-5). No TensorRT types: the plugin and the C entry
//! points (zipvl.plugins.cuda_ops) both call it.
#ifndef ZIPVL_TOKEN_SELECT_KERNELS_H
#define ZIPVL_TOKEN_SELECT_KERNELS_H

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../common/zipvlDType.h"

namespace zipvl
{
namespace kernels
{

//! One ZipVLTokenSelect call. All pointers are device pointers; tensors are contiguous (linear format).
struct TokenSelectParams
{
    void const* query{};           //!< (B, H, n, d) of `dtype`
    void const* key{};             //!< (B, H_kv, n, d) of `dtype`
    int32_t const* probes{};       //!< (B, m) ascending probe positions, last = n - 1
    DType dtype{DType::kFLOAT32};  //!< element type of query and key
    int32_t batch{};               //!< B
    int32_t numHeads{};            //!< H
    int32_t numKvHeads{};          //!< H_kv (H % H_kv == 0)
    int32_t seqLen{};              //!< n
    int32_t headDim{};             //!< d <= kMaxHeadDim
    int32_t numProbes{};           //!< m <= n
    float tau{};                   //!< retention threshold in (0, 1]
    float scaling{};               //!< softmax scale
    int32_t* keptIndices{};        //!< out (B, n): ascending kept positions, then -1
    int32_t* keptCount{};          //!< out (B,): p per sequence
    float* mass{};                 //!< out (B, n): summed probe attention a_j
};

//! Workspace bytes for a call with these dimensions (an upper bound, computable without a GPU). Non-decreasing in
//! every argument, so the size for a profile's max shape covers every smaller shape.
size_t tokenSelectWorkspaceSize(int32_t batch, int32_t numHeads, int32_t seqLen, int32_t numProbes) noexcept;

//! Host-side checks of the dimensions and scalars; returns a ZIPVL_STATUS_* code.
int32_t checkTokenSelect(TokenSelectParams const& p) noexcept;

//! Enqueues the whole selection on `stream`. Returns a ZIPVL_STATUS_* code; ZIPVL_STATUS_CUDA leaves the CUDA
//! error in lastCudaError().
int32_t launchTokenSelect(
    TokenSelectParams const& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept;

//! The CUDA error behind the last ZIPVL_STATUS_CUDA returned on this thread.
cudaError_t lastCudaError() noexcept;

} // namespace kernels
} // namespace zipvl

#endif // ZIPVL_TOKEN_SELECT_KERNELS_H
