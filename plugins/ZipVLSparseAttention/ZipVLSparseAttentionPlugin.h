// SPDX-License-Identifier: Apache-2.0
//! ZipVLSparseAttention: TensorRT IPluginV3 for attention over the kept tokens and KV eviction (method steps 6-7).
//! See README.md.
#ifndef ZIPVL_SPARSE_ATTENTION_PLUGIN_H
#define ZIPVL_SPARSE_ATTENTION_PLUGIN_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "../common/zipvlPluginBase.h"
#include "../common/zipvlPluginUtils.h"

namespace zipvl
{
namespace plugin
{

//! Node attributes of ZipVLSparseAttention (all required): exactly the head attributes both plugins share.
using SparseAttentionAttrs = HeadAttrs;

//! Inputs query (B,H,n,d), key (B,H_kv,n,d), value (B,H_kv,n,d), kept_indices (B,n) int32, kept_count (B,) int32;
//! outputs attn_out (B,H,n,d), key_compact (B,H_kv,n,d), value_compact (B,H_kv,n,d), all of query's type.
class ZipVLSparseAttentionPlugin : public ZipVLPluginBase<ZipVLSparseAttentionPlugin, SparseAttentionAttrs>
{
public:
    //! Plugin and creator name (the ONNX op type).
    static constexpr char const* kName = "ZipVLSparseAttention";
    //! 5: query, key, value, kept_indices, kept_count.
    static constexpr int32_t kNbInputs = 5;
    //! 3: attn_out, key_compact, value_compact.
    static constexpr int32_t kNbOutputs = 3;

    //! Builds the plugin from validated attributes.
    using ZipVLPluginBase::ZipVLPluginBase;

    //! attn_out = query's dims, key_compact = key's, value_compact = value's.
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    //! 0: the kernels need no workspace.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    //! Launches zero-fill, gathered attention and compaction on `stream`; 0 on success.
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    friend ZipVLPluginBase; // calls the hooks below

    //! Empty when the (runtime or static) input dims agree with the attributes.
    std::string checkDims(nvinfer1::Dims const* in) const;
    //! query's type for all three outputs.
    void setOutputTypes(nvinfer1::DataType* outputTypes, nvinfer1::DataType const* inputTypes) const noexcept;
    //! query fp32/fp16/bf16, key/value/outputs the same type; int32 indices and count.
    static bool supportsType(int32_t pos, nvinfer1::DataType type, nvinfer1::DataType queryType) noexcept;
};

//! Creator registered under name "ZipVLSparseAttention", version "1", namespace "zipvl"; declares scaling
//! (FLOAT32), num_heads, num_kv_heads, head_dim (INT32).
using ZipVLSparseAttentionCreator = ZipVLCreatorBase<ZipVLSparseAttentionPlugin>;

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_SPARSE_ATTENTION_PLUGIN_H
