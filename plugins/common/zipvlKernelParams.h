// SPDX-License-Identifier: Apache-2.0
//! What the kernels' Params structs (TokenSelectParams, SparseAttentionParams) share, filled in one place for the
//! plugins and the C entry points. No TensorRT or CUDA types.
#ifndef ZIPVL_KERNEL_PARAMS_H
#define ZIPVL_KERNEL_PARAMS_H

#include <cstdint>

namespace zipvl
{
namespace kernels
{

//! Sets query, key and the dimensions / scale every op takes: B, H, H_kv, n, d and the softmax scale.
template <class Params>
void setSharedParams(Params& p, void const* query, void const* key, int32_t batch, int32_t numHeads,
    int32_t numKvHeads, int32_t seqLen, int32_t headDim, float scaling) noexcept
{
    p.query = query;
    p.key = key;
    p.batch = batch;
    p.numHeads = numHeads;
    p.numKvHeads = numKvHeads;
    p.seqLen = seqLen;
    p.headDim = headDim;
    p.scaling = scaling;
}

} // namespace kernels
} // namespace zipvl

#endif // ZIPVL_KERNEL_PARAMS_H
