// SPDX-License-Identifier: Apache-2.0
// extern "C" entry points of libzipvl_kernels.so: the CUDA kernels without TensorRT, for ctypes
// (zipvl/plugins/cuda_ops.py hands over torch CUDA tensors' data_ptr(), their device and the current stream).
// This library links cudart statically; both runtimes share the device's primary context, so torch's pointers
// and streams are valid here once the same device is current.
#include "../ZipVLSparseAttention/sparseAttentionKernels.h"
#include "../ZipVLTokenSelect/tokenSelectInternal.cuh"
#include "../ZipVLTokenSelect/tokenSelectKernels.h"
#include "zipvlKernelParams.h"
#include "zipvlStatus.h"

#include <cuda_runtime_api.h>

#define ZIPVL_EXPORT extern "C" __attribute__((visibility("default")))

using namespace zipvl;
using namespace zipvl::kernels;

namespace
{

//! Makes `device` current for this library's CUDA runtime (torch's tensors may live on any device).
int32_t selectDevice(int32_t device)
{
    return device >= 0 ? cudaStatus(cudaSetDevice(device)) : ZIPVL_STATUS_OK;
}

bool toDType(int32_t code, DType& out)
{
    if (code < 0 || code > 2)
    {
        return false;
    }
    out = static_cast<DType>(code);
    return true;
}

//! Checks the dtype code, makes `device` current and fills the fields both ops' params share. Returns a
//! ZIPVL_STATUS_* code (the entry point returns it as is unless it is ZIPVL_STATUS_OK).
template <class Params>
int32_t prepareParams(Params& p, int32_t dtype, int32_t device, void const* query, void const* key, int32_t batch,
    int32_t numHeads, int32_t numKvHeads, int32_t seqLen, int32_t headDim, float scaling)
{
    if (!toDType(dtype, p.dtype))
    {
        return ZIPVL_STATUS_BAD_ARGUMENT;
    }
    if (int32_t const status = selectDevice(device))
    {
        return status;
    }
    setSharedParams(p, query, key, batch, numHeads, numKvHeads, seqLen, headDim, scaling);
    return ZIPVL_STATUS_OK;
}

} // namespace

//! Version of this C ABI; bumped whenever a signature below changes.
ZIPVL_EXPORT int32_t zipvl_cuda_abi_version(void)
{
    return 1;
}

//! Message for a ZIPVL_STATUS_* code.
ZIPVL_EXPORT char const* zipvl_cuda_status_string(int32_t status)
{
    return zipvlStatusString(status);
}

//! The CUDA error string behind the last ZIPVL_STATUS_CUDA on this thread.
ZIPVL_EXPORT char const* zipvl_cuda_last_error(void)
{
    return cudaGetErrorString(lastCudaError());
}

//! Workspace bytes zipvl_cuda_token_select needs (no GPU needed to ask).
ZIPVL_EXPORT size_t zipvl_cuda_token_select_workspace_size(
    int32_t batch, int32_t num_heads, int32_t seq_len, int32_t num_probes)
{
    return tokenSelectWorkspaceSize(batch, num_heads, seq_len, num_probes);
}

//! ZipVLTokenSelect on device pointers; dtype 0 = fp32, 1 = fp16, 2 = bf16; device < 0 keeps the current one.
//! Asynchronous on `stream`.
ZIPVL_EXPORT int32_t zipvl_cuda_token_select(void const* query, void const* key, int32_t const* probes,
    int32_t dtype, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t seq_len, int32_t head_dim,
    int32_t num_probes, float tau, float scaling, int32_t* kept_indices, int32_t* kept_count, float* mass,
    void* workspace, size_t workspace_bytes, int32_t device, void* stream)
{
    TokenSelectParams p;
    if (int32_t const status = prepareParams(
            p, dtype, device, query, key, batch, num_heads, num_kv_heads, seq_len, head_dim, scaling))
    {
        return status;
    }
    p.probes = probes;
    p.numProbes = num_probes;
    p.tau = tau;
    p.keptIndices = kept_indices;
    p.keptCount = kept_count;
    p.mass = mass;
    return launchTokenSelect(p, workspace, workspace_bytes, static_cast<cudaStream_t>(stream));
}

//! ZipVLSparseAttention on device pointers; dtype and device as above. Asynchronous on `stream`.
ZIPVL_EXPORT int32_t zipvl_cuda_sparse_attention(void const* query, void const* key, void const* value,
    int32_t const* kept_indices, int32_t const* kept_count, int32_t dtype, int32_t batch, int32_t num_heads,
    int32_t num_kv_heads, int32_t seq_len, int32_t head_dim, float scaling, void* attn_out, void* key_compact,
    void* value_compact, int32_t device, void* stream)
{
    SparseAttentionParams p;
    if (int32_t const status = prepareParams(
            p, dtype, device, query, key, batch, num_heads, num_kv_heads, seq_len, head_dim, scaling))
    {
        return status;
    }
    p.value = value;
    p.keptIndices = kept_indices;
    p.keptCount = kept_count;
    p.attnOut = attn_out;
    p.keyCompact = key_compact;
    p.valueCompact = value_compact;
    return launchSparseAttention(p, static_cast<cudaStream_t>(stream));
}
