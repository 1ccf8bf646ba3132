// SPDX-License-Identifier: Apache-2.0
//! TensorRT-side helpers shared by the zipvl plugins: identity, logging, attribute fields, tensor checks.
#ifndef ZIPVL_PLUGIN_UTILS_H
#define ZIPVL_PLUGIN_UTILS_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "zipvlDType.h"

namespace zipvl
{
namespace plugin
{

//! Plugin namespace = the ONNX node domain the exporter emits.
constexpr char const* kPluginNamespace = "zipvl";
//! plugin_version of every zipvl plugin (the ONNX attribute `plugin_version`).
constexpr char const* kPluginVersion = "1";

//! Stores the finder TensorRT hands to setLoggerFinder (the logger is looked up lazily, at each message).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Sends `msg` to TensorRT's logger (stderr when none is set, for errors and warnings only).
void log(nvinfer1::ILogger::Severity severity, std::string const& msg) noexcept;

//! Logs an error prefixed by the plugin name.
void logError(char const* plugin, std::string const& msg) noexcept;

//! Reads a scalar integer field. The ONNX parser passes INT attributes as kINT32 (even when the creator declares
//! kINT64), so this switches on the field's actual type.
bool readInt(nvinfer1::PluginField const& field, int32_t& out) noexcept;

//! Reads a scalar float field: kFLOAT32 (ONNX FLOAT), kFLOAT64, or an integer type.
bool readFloat(nvinfer1::PluginField const& field, float& out) noexcept;

//! One named scalar attribute of a plugin: where to parse it and how to serialise it.
struct Attribute
{
    char const* name;               //!< ONNX attribute / PluginField name
    nvinfer1::PluginFieldType type; //!< kFLOAT32 or kINT32 (the type it is serialised with)
    void* value;                    //!< float* or int32_t*
};

//! Fills every attribute from `fc`; false (with `error` set) when one is missing or has an unreadable type.
//! Fields that are not attributes (plugin_version, plugin_namespace) are ignored.
bool parseAttributes(nvinfer1::PluginFieldCollection const* fc, std::vector<Attribute> const& attrs,
    std::string& error) noexcept;

//! PluginFields pointing at the attributes' storage (for getFieldNames and getFieldsToSerialize).
std::vector<nvinfer1::PluginField> toFields(std::vector<Attribute> const& attrs);

//! The kernels' element type for a TensorRT type; false for anything but fp32/fp16/bf16.
bool toKernelDType(nvinfer1::DataType type, DType& out) noexcept;

//! fp32, fp16 or bf16.
bool isActivationType(nvinfer1::DataType type) noexcept;

//! The node attributes both plugins take (all required): the attention heads and the softmax scale.
struct HeadAttrs
{
    float scaling{};       //!< softmax scale (FLOAT)
    int32_t numHeads{};    //!< H (INT)
    int32_t numKvHeads{};  //!< H_kv (INT)
    int32_t headDim{};     //!< d (INT)

    //! scaling, num_heads, num_kv_heads, head_dim as named fields over this object's storage.
    std::vector<Attribute> fields();
    //! Empty when the values are consistent, else the reason.
    std::string check() const;
};

//! True when a known dimension contradicts an expected one (a dimension the builder does not know yet, -1, cannot
//! contradict anything).
inline bool differs(int64_t actual, int64_t expected) noexcept
{
    return actual >= 0 && expected >= 0 && actual != expected;
}

//! enqueue's result for a kernel launcher's ZIPVL_STATUS_* code: 0 for ok, else -1 after logging the status
//! message (with the CUDA error string for ZIPVL_STATUS_CUDA) under the plugin name.
int32_t reportKernelStatus(char const* plugin, int32_t status) noexcept;

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_PLUGIN_UTILS_H
