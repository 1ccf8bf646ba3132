// SPDX-License-Identifier: Apache-2.0
//! ZipVLTokenSelect: TensorRT IPluginV3 for ZipVL's token selection (method steps 2-5). See README.md.
#ifndef ZIPVL_TOKEN_SELECT_PLUGIN_H
#define ZIPVL_TOKEN_SELECT_PLUGIN_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "../common/zipvlPluginBase.h"
#include "../common/zipvlPluginUtils.h"

namespace zipvl
{
namespace plugin
{

//! Node attributes of ZipVLTokenSelect (all required; the exporter writes every one).
struct TokenSelectAttrs : HeadAttrs
{
    float tau{};           //!< retention threshold in (0, 1] (FLOAT)

    //! tau, then the head attributes, as named fields over this object's storage.
    std::vector<Attribute> fields();
    //! Empty when the values are consistent, else the reason.
    std::string check() const;
};

//! Inputs query (B,H,n,d), key (B,H_kv,n,d), probes (B,m) int32; outputs kept_indices (B,n) int32,
//! kept_count (B,) int32, mass (B,n) float32. Fixed capacity n: no data-dependent shapes.
class ZipVLTokenSelectPlugin : public ZipVLPluginBase<ZipVLTokenSelectPlugin, TokenSelectAttrs>
{
public:
    //! Plugin and creator name (the ONNX op type).
    static constexpr char const* kName = "ZipVLTokenSelect";
    //! 3: query, key, probes.
    static constexpr int32_t kNbInputs = 3;
    //! 3: kept_indices, kept_count, mass.
    static constexpr int32_t kNbOutputs = 3;

    //! Builds the plugin from validated attributes.
    using ZipVLPluginBase::ZipVLPluginBase;

    //! (B, n), (B,), (B, n) from query's dims.
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    //! Row statistics, sort keys, flags and CUB temp storage for the profile's max shapes.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    //! Launches the selection kernels on `stream`; 0 on success.
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    friend ZipVLPluginBase; // calls the hooks below

    //! Empty when the (runtime or static) dims of query, key and probes agree with the attributes.
    std::string checkDims(nvinfer1::Dims const* in) const;
    //! int32, int32, float32 whatever the input type.
    void setOutputTypes(nvinfer1::DataType* outputTypes, nvinfer1::DataType const* inputTypes) const noexcept;
    //! query fp32/fp16/bf16 with key of the same type; int32 probes / indices / count; fp32 mass.
    static bool supportsType(int32_t pos, nvinfer1::DataType type, nvinfer1::DataType queryType) noexcept;
};

//! Creator registered under name "ZipVLTokenSelect", version "1", namespace "zipvl"; declares tau, scaling
//! (FLOAT32), num_heads, num_kv_heads, head_dim (INT32).
using ZipVLTokenSelectCreator = ZipVLCreatorBase<ZipVLTokenSelectPlugin>;

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_TOKEN_SELECT_PLUGIN_H
