// SPDX-License-Identifier: Apache-2.0
//! ZipVLTokenSelect: TensorRT IPluginV3 for ZipVL's token selection (method steps 2-5). See README.md.
#ifndef ZIPVL_TOKEN_SELECT_PLUGIN_H
#define ZIPVL_TOKEN_SELECT_PLUGIN_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "../common/zipvlPluginUtils.h"

namespace zipvl
{
namespace plugin
{

//! Node attributes of ZipVLTokenSelect (all required; the exporter writes every one).
struct TokenSelectAttrs
{
    float tau{};           //!< retention threshold in (0, 1] (FLOAT)
    float scaling{};       //!< softmax scale (FLOAT)
    int32_t numHeads{};    //!< H (INT)
    int32_t numKvHeads{};  //!< H_kv (INT)
    int32_t headDim{};     //!< d (INT)

    //! The attributes as named fields over this object's storage.
    std::vector<Attribute> fields();
    //! Empty when the values are consistent, else the reason.
    std::string check() const;
};

//! Inputs query (B,H,n,d), key (B,H_kv,n,d), probes (B,m) int32; outputs kept_indices (B,n) int32,
//! kept_count (B,) int32, mass (B,n) float32. Fixed capacity n: no data-dependent shapes.
class ZipVLTokenSelectPlugin : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime
{
public:
    //! Builds the plugin from validated attributes.
    explicit ZipVLTokenSelectPlugin(TokenSelectAttrs const& attrs);
    ~ZipVLTokenSelectPlugin() override = default;

    //! Returns this object as the requested capability (core, build or runtime).
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    //! Deep copy (TensorRT owns and deletes it).
    nvinfer1::IPluginV3* clone() noexcept override;

    //! "ZipVLTokenSelect".
    char const* getPluginName() const noexcept override;
    //! "1".
    char const* getPluginVersion() const noexcept override;
    //! "zipvl".
    char const* getPluginNamespace() const noexcept override;

    //! 3: kept_indices, kept_count, mass.
    int32_t getNbOutputs() const noexcept override;
    //! Checks that static head counts / head_dim agree with the attributes.
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! int32, int32, float32 whatever the input type.
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    //! (B, n), (B,), (B, n) from query's dims.
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    //! Linear tensors; query fp32/fp16/bf16 with key of the same type; int32 probes / indices / count; fp32 mass.
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    //! Row statistics, sort keys, flags and CUB temp storage for the profile's max shapes.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    //! Re-checks the runtime shapes.
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! Launches the selection kernels on `stream`; 0 on success.
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    //! A clone per execution context (the plugin holds no per-context resources).
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    //! The attributes as kFLOAT32 / kINT32 fields; the creator rebuilds the plugin from them at runtime.
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Empty when the (runtime or static) input dims agree with the attributes.
    std::string checkDims(nvinfer1::Dims const& query, nvinfer1::Dims const& key, nvinfer1::Dims const& probes) const;

    TokenSelectAttrs mAttrs;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

//! Creator registered under name "ZipVLTokenSelect", version "1", namespace "zipvl".
class ZipVLTokenSelectCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    //! Declares the attribute fields (tau, scaling FLOAT32; num_heads, num_kv_heads, head_dim INT32).
    ZipVLTokenSelectCreator();
    ~ZipVLTokenSelectCreator() override = default;

    //! "ZipVLTokenSelect".
    char const* getPluginName() const noexcept override;
    //! "1".
    char const* getPluginVersion() const noexcept override;
    //! "zipvl".
    char const* getPluginNamespace() const noexcept override;
    //! The attribute fields the ONNX parser forwards (others are dropped by the parser).
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    //! Parses the fields whatever their numeric type (build: ONNX attributes; runtime: serialised fields).
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    TokenSelectAttrs mDeclared;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_TOKEN_SELECT_PLUGIN_H
