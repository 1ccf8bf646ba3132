// SPDX-License-Identifier: Apache-2.0
// The only symbols libzipvl_plugins.so exports: getCreators and setLoggerFinder (what
// IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and the ONNX parser need) and zipvl_plugin_info, a
// TensorRT-free description of the creators for tests on machines without libnvinfer.
#include <NvInferRuntime.h>

#include <string>

#include "../ZipVLSparseAttention/ZipVLSparseAttentionPlugin.h"
#include "../ZipVLTokenSelect/ZipVLTokenSelectPlugin.h"
#include "zipvlPluginUtils.h"

#define ZIPVL_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{

char const* fieldTypeName(nvinfer1::PluginFieldType type)
{
    switch (type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: return "FLOAT32";
    case nvinfer1::PluginFieldType::kINT32: return "INT32";
    case nvinfer1::PluginFieldType::kCHAR: return "CHAR";
    default: return "OTHER";
    }
}

} // namespace

//! Every creator of the library (static objects: they live as long as the library is loaded).
ZIPVL_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static zipvl::plugin::ZipVLTokenSelectCreator tokenSelect;
    static zipvl::plugin::ZipVLSparseAttentionCreator sparseAttention;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&tokenSelect, &sparseAttention};
    nbCreators = 2;
    return creators;
}

//! TensorRT hands over its logger finder when it loads the library (without this export loadLibrary fails).
ZIPVL_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    zipvl::plugin::setLoggerFinder(finder);
}

//! JSON list of {name, version, namespace, interface, fields: [[name, type], ...]} read through getCreators and
//! the creators' virtual interface, exactly as TensorRT would.
ZIPVL_EXPORT char const* zipvl_plugin_info(void)
{
    static std::string json;
    int32_t nb = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(nb);
    json = "[";
    for (int32_t i = 0; i < nb; ++i)
    {
        nvinfer1::InterfaceInfo const info = creators[i]->getInterfaceInfo();
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        json += std::string(i ? "," : "") + "{\"name\":\"" + creator->getPluginName() + "\",\"version\":\""
            + creator->getPluginVersion() + "\",\"namespace\":\"" + creator->getPluginNamespace()
            + "\",\"interface\":\"" + info.kind + "\",\"interface_version\":" + std::to_string(info.major)
            + ",\"fields\":[";
        nvinfer1::PluginFieldCollection const* fc = creator->getFieldNames();
        for (int32_t f = 0; f < fc->nbFields; ++f)
        {
            json += std::string(f ? "," : "") + "[\"" + fc->fields[f].name + "\",\""
                + fieldTypeName(fc->fields[f].type) + "\"]";
        }
        json += "]}";
    }
    json += "]";
    return json.c_str();
}
