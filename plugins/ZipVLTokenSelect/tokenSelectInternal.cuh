// SPDX-License-Identifier: Apache-2.0
//! Internal pieces of ZipVLTokenSelect shared by its .cu files: the workspace slices and the stage launchers.
#ifndef ZIPVL_TOKEN_SELECT_INTERNAL_CUH
#define ZIPVL_TOKEN_SELECT_INTERNAL_CUH

#include "tokenSelectKernels.h"

namespace zipvl
{
namespace kernels
{

//! The workspace carved into typed slices (see tokenSelect.cu for the layout).
struct TokenSelectWorkspace
{
    float* rowMax{};      //!< (B, H_kv, g*m) softmax max of each probe row
    float* rowInvSum{};   //!< (B, H_kv, g*m) 1 / softmax denominator of each probe row
    uint64_t* keysA{};    //!< (B*n) sort keys, first buffer
    uint64_t* keysB{};    //!< (B*n) sort keys, second buffer
    int32_t* counts{};    //!< (B,) adaptive count p before compaction
    uint8_t* flags{};     //!< (B, n) kept flags
    void* cubTemp{};      //!< CUB radix-sort temporary storage
    size_t cubBytes{};    //!< bytes available at cubTemp
};

//! Steps 2-3: fills p.mass (and the row statistics in ws). Returns a CUDA error.
cudaError_t launchProbeMass(TokenSelectParams const& p, TokenSelectWorkspace const& ws, cudaStream_t stream);

//! Steps 4-5: from p.mass to p.keptCount / p.keptIndices. Returns a ZIPVL_STATUS_* code.
int32_t launchAdaptiveSelect(TokenSelectParams const& p, TokenSelectWorkspace const& ws, cudaStream_t stream);

//! Records `err` for lastCudaError() and maps it to a status code.
int32_t cudaStatus(cudaError_t err) noexcept;

} // namespace kernels
} // namespace zipvl

#endif // ZIPVL_TOKEN_SELECT_INTERNAL_CUH
