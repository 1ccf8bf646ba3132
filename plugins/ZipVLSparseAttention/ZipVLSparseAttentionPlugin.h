// SPDX-License-Identifier: Apache-2.0
//! ZipVLSparseAttention: TensorRT IPluginV3 for attention over the kept tokens and KV eviction (method steps 6-7).
//! See README.md.
#ifndef ZIPVL_SPARSE_ATTENTION_PLUGIN_H
#define ZIPVL_SPARSE_ATTENTION_PLUGIN_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "../common/zipvlPluginUtils.h"

namespace zipvl
{
namespace plugin
{

//! Node attributes of ZipVLSparseAttention (all required).
struct SparseAttentionAttrs
{
    float scaling{};       //!< softmax scale (FLOAT)
    int32_t numHeads{};    //!< H (INT)
    int32_t numKvHeads{};  //!< H_kv (INT)
    int32_t headDim{};     //!< d (INT)

    //! The attributes as named fields over this object's storage.
    std::vector<Attribute> fields();
    //! Empty when the values are consistent, else the reason.
    std::string check() const;
};

//! Inputs query (B,H,n,d), key (B,H_kv,n,d), value (B,H_kv,n,d), kept_indices (B,n) int32, kept_count (B,) int32;
//! outputs attn_out (B,H,n,d), key_compact (B,H_kv,n,d), value_compact (B,H_kv,n,d), all of query's type.
class ZipVLSparseAttentionPlugin : public nvinfer1::IPluginV3,
                                   public nvinfer1::IPluginV3OneCore,
                                   public nvinfer1::IPluginV3OneBuild,
                                   public nvinfer1::IPluginV3OneRuntime
{
public:
    //! Builds the plugin from validated attributes.
    explicit ZipVLSparseAttentionPlugin(SparseAttentionAttrs const& attrs);
    ~ZipVLSparseAttentionPlugin() override = default;

    //! Returns this object as the requested capability (core, build or runtime).
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    //! Deep copy (TensorRT owns and deletes it).
    nvinfer1::IPluginV3* clone() noexcept override;

    //! "ZipVLSparseAttention".
    char const* getPluginName() const noexcept override;
    //! "1".
    char const* getPluginVersion() const noexcept override;
    //! "zipvl".
    char const* getPluginNamespace() const noexcept override;

    //! 3: attn_out, key_compact, value_compact.
    int32_t getNbOutputs() const noexcept override;
    //! Checks that static head counts / head_dim agree with the attributes.
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! query's type for all three outputs.
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    //! attn_out = query's dims, key_compact = key's, value_compact = value's.
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    //! Linear tensors; query fp32/fp16/bf16, key/value/outputs the same type; int32 indices and count.
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    //! 0: the kernels need no workspace.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    //! Re-checks the runtime shapes.
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! Launches zero-fill, gathered attention and compaction on `stream`; 0 on success.
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    //! A clone per execution context (the plugin holds no per-context resources).
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    //! The attributes as kFLOAT32 / kINT32 fields; the creator rebuilds the plugin from them at runtime.
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Empty when the (runtime or static) input dims agree with the attributes.
    std::string checkDims(nvinfer1::Dims const* in) const;

    SparseAttentionAttrs mAttrs;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

//! Creator registered under name "ZipVLSparseAttention", version "1", namespace "zipvl".
class ZipVLSparseAttentionCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    //! Declares the attribute fields (scaling FLOAT32; num_heads, num_kv_heads, head_dim INT32).
    ZipVLSparseAttentionCreator();
    ~ZipVLSparseAttentionCreator() override = default;

    //! "ZipVLSparseAttention".
    char const* getPluginName() const noexcept override;
    //! "1".
    char const* getPluginVersion() const noexcept override;
    //! "zipvl".
    char const* getPluginNamespace() const noexcept override;
    //! The attribute fields the ONNX parser forwards.
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    //! Parses the fields whatever their numeric type (build: ONNX attributes; runtime: serialised fields).
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    SparseAttentionAttrs mDeclared;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_SPARSE_ATTENTION_PLUGIN_H
