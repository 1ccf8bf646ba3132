// SPDX-License-Identifier: Apache-2.0
// Logging, attribute parsing and kernel status reporting shared by the zipvl plugins.
#include "zipvlPluginUtils.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "../ZipVLTokenSelect/tokenSelectKernels.h"
#include "zipvlStatus.h"

namespace zipvl
{
namespace plugin
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

template <typename T>
T scalarAs(void const* data)
{
    T v;
    std::memcpy(&v, data, sizeof(T));
    return v;
}

// A non-null scalar: at least one element behind field.data.
bool hasScalar(nvinfer1::PluginField const& field) noexcept
{
    return field.data != nullptr && field.length >= 1;
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void log(nvinfer1::ILogger::Severity severity, std::string const& msg) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger)
    {
        logger->log(severity, msg.c_str());
    }
    else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[zipvl] %s\n", msg.c_str());
    }
}

void logError(char const* plugin, std::string const& msg) noexcept
{
    log(nvinfer1::ILogger::Severity::kERROR, std::string(plugin) + ": " + msg);
}

bool readInt(nvinfer1::PluginField const& field, int32_t& out) noexcept
{
    using nvinfer1::PluginFieldType;
    if (!hasScalar(field))
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT32: out = scalarAs<int32_t>(field.data); return true;
    case PluginFieldType::kINT64:
    {
        int64_t const v = scalarAs<int64_t>(field.data);
        out = static_cast<int32_t>(v);
        return v == out;
    }
    case PluginFieldType::kINT16: out = scalarAs<int16_t>(field.data); return true;
    case PluginFieldType::kINT8: out = scalarAs<int8_t>(field.data); return true;
    default: return false;
    }
}

bool readFloat(nvinfer1::PluginField const& field, float& out) noexcept
{
    // Integer types (readInt fails for the float types and for anything unreadable, leaving `i` untouched).
    int32_t i = 0;
    if (readInt(field, i))
    {
        out = static_cast<float>(i);
        return true;
    }
    bool const isFloat32 = field.type == nvinfer1::PluginFieldType::kFLOAT32;
    if (!hasScalar(field) || !(isFloat32 || field.type == nvinfer1::PluginFieldType::kFLOAT64))
    {
        return false;
    }
    out = isFloat32 ? scalarAs<float>(field.data) : static_cast<float>(scalarAs<double>(field.data));
    return true;
}

bool parseAttributes(nvinfer1::PluginFieldCollection const* fc, std::vector<Attribute> const& attrs,
    std::string& error) noexcept
{
    std::vector<bool> seen(attrs.size(), false);
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& f = fc->fields[i];
        for (size_t a = 0; a < attrs.size(); ++a)
        {
            if (f.name == nullptr || std::strcmp(f.name, attrs[a].name) != 0)
            {
                continue;
            }
            bool const ok = attrs[a].type == nvinfer1::PluginFieldType::kFLOAT32
                ? readFloat(f, *static_cast<float*>(attrs[a].value))
                : readInt(f, *static_cast<int32_t*>(attrs[a].value));
            if (!ok)
            {
                error = std::string("attribute '") + attrs[a].name + "' has an unsupported field type "
                    + std::to_string(static_cast<int32_t>(f.type));
                return false;
            }
            seen[a] = true;
        }
    }
    for (size_t a = 0; a < attrs.size(); ++a)
    {
        if (!seen[a])
        {
            error = std::string("missing required attribute '") + attrs[a].name + "'";
            return false;
        }
    }
    return true;
}

std::vector<nvinfer1::PluginField> toFields(std::vector<Attribute> const& attrs)
{
    std::vector<nvinfer1::PluginField> fields;
    fields.reserve(attrs.size());
    for (Attribute const& a : attrs)
    {
        fields.emplace_back(a.name, a.value, a.type, 1);
    }
    return fields;
}

bool toKernelDType(nvinfer1::DataType type, DType& out) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: out = DType::kFLOAT32; return true;
    case nvinfer1::DataType::kHALF: out = DType::kFLOAT16; return true;
    case nvinfer1::DataType::kBF16: out = DType::kBFLOAT16; return true;
    default: return false;
    }
}

bool isActivationType(nvinfer1::DataType type) noexcept
{
    DType unused;
    return toKernelDType(type, unused);
}

std::vector<Attribute> HeadAttrs::fields()
{
    return {{"scaling", nvinfer1::PluginFieldType::kFLOAT32, &scaling},
        {"num_heads", nvinfer1::PluginFieldType::kINT32, &numHeads},
        {"num_kv_heads", nvinfer1::PluginFieldType::kINT32, &numKvHeads},
        {"head_dim", nvinfer1::PluginFieldType::kINT32, &headDim}};
}

std::string HeadAttrs::check() const
{
    if (numHeads < 1 || numKvHeads < 1 || numHeads % numKvHeads != 0)
    {
        return "num_heads (" + std::to_string(numHeads) + ") must be a positive multiple of num_kv_heads ("
            + std::to_string(numKvHeads) + ")";
    }
    if (headDim < 1 || headDim > 256)
    {
        return "head_dim must be in [1, 256], got " + std::to_string(headDim);
    }
    if (!std::isfinite(scaling))
    {
        return "scaling must be finite";
    }
    return {};
}

int32_t reportKernelStatus(char const* plugin, int32_t status) noexcept
{
    if (status == ZIPVL_STATUS_OK)
    {
        return 0;
    }
    std::string msg = zipvlStatusString(status);
    if (status == ZIPVL_STATUS_CUDA)
    {
        msg += std::string(": ") + cudaGetErrorString(kernels::lastCudaError());
    }
    logError(plugin, msg);
    return -1;
}

} // namespace plugin
} // namespace zipvl
