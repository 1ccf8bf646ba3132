// SPDX-License-Identifier: Apache-2.0
//! The CPU twin: both zipvl plugin ops in plain C++ (fp32), same contract as the TensorRT nodes.
//! ONNX Runtime (through zipvl.plugins.ort_ops) and the tests call it with ctypes; it is the CPU oracle the CUDA
//! kernels are compared with on the GPU box.
#ifndef ZIPVL_CPU_H
#define ZIPVL_CPU_H

#include <stdint.h>

#include "../common/zipvlStatus.h"

#define ZIPVL_CPU_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C"
{
#endif

//! Version of this C ABI; bumped whenever a signature below changes.
ZIPVL_CPU_API int32_t zipvl_cpu_abi_version(void);

//! Message for a status code returned by the functions below.
ZIPVL_CPU_API char const* zipvl_cpu_status_string(int32_t status);

//! ZipVLTokenSelect. query (B,H,n,d), key (B,H_kv,n,d), probes (B,m) ascending ending at n-1.
//! Writes kept_indices (B,n) (ascending kept positions, then -1), kept_count (B,), mass (B,n).
ZIPVL_CPU_API int32_t zipvl_cpu_token_select_f32(float const* query, float const* key, int32_t const* probes,
    int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t seq_len, int32_t head_dim, int32_t num_probes,
    float tau, float scaling, int32_t* kept_indices, int32_t* kept_count, float* mass);

//! ZipVLSparseAttention. query (B,H,n,d), key/value (B,H_kv,n,d), kept_indices (B,n), kept_count (B,).
//! Writes attn_out (B,H,n,d) (zero rows outside the kept set), key_compact/value_compact (B,H_kv,n,d).
ZIPVL_CPU_API int32_t zipvl_cpu_sparse_attention_f32(float const* query, float const* key, float const* value,
    int32_t const* kept_indices, int32_t const* kept_count, int32_t batch, int32_t num_heads, int32_t num_kv_heads,
    int32_t seq_len, int32_t head_dim, float scaling, float* attn_out, float* key_compact, float* value_compact);

#ifdef __cplusplus
}
#endif

#endif // ZIPVL_CPU_H
