// SPDX-License-Identifier: Apache-2.0
// ZipVLTokenSelect plugin and creator: TensorRT glue around tokenSelectKernels.h.
#include "ZipVLTokenSelectPlugin.h"

#include <cmath>
#include <exception>

#include "../common/zipvlStatus.h"
#include "tokenSelectKernels.h"

using namespace nvinfer1;

namespace zipvl
{
namespace plugin
{
namespace
{

constexpr char const* kName = "ZipVLTokenSelect";
constexpr int32_t kNbInputs = 3;  // query, key, probes
constexpr int32_t kNbOutputs = 3; // kept_indices, kept_count, mass

// A dimension the builder does not know yet (-1) cannot contradict anything.
bool differs(int64_t actual, int64_t expected)
{
    return actual >= 0 && expected >= 0 && actual != expected;
}

} // namespace

std::vector<Attribute> TokenSelectAttrs::fields()
{
    return {{"tau", PluginFieldType::kFLOAT32, &tau}, {"scaling", PluginFieldType::kFLOAT32, &scaling},
        {"num_heads", PluginFieldType::kINT32, &numHeads}, {"num_kv_heads", PluginFieldType::kINT32, &numKvHeads},
        {"head_dim", PluginFieldType::kINT32, &headDim}};
}

std::string TokenSelectAttrs::check() const
{
    if (!(tau > 0.0f && tau <= 1.0f))
    {
        return "tau must be in (0, 1], got " + std::to_string(tau);
    }
    return checkHeads(numHeads, numKvHeads, headDim, scaling);
}

ZipVLTokenSelectPlugin::ZipVLTokenSelectPlugin(TokenSelectAttrs const& attrs)
    : mAttrs(attrs)
{
}

IPluginCapability* ZipVLTokenSelectPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* ZipVLTokenSelectPlugin::clone() noexcept
{
    try
    {
        return new ZipVLTokenSelectPlugin(mAttrs); // fresh field storage: never share pointers with this object
    }
    catch (std::exception const& e)
    {
        logError(kName, e.what());
        return nullptr;
    }
}

char const* ZipVLTokenSelectPlugin::getPluginName() const noexcept
{
    return kName;
}

char const* ZipVLTokenSelectPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ZipVLTokenSelectPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t ZipVLTokenSelectPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

std::string ZipVLTokenSelectPlugin::checkDims(Dims const& query, Dims const& key, Dims const& probes) const
{
    if (query.nbDims != 4 || key.nbDims != 4 || probes.nbDims != 2)
    {
        return "expected query (B,H,n,d), key (B,H_kv,n,d) and probes (B,m)";
    }
    if (differs(query.d[1], mAttrs.numHeads) || differs(key.d[1], mAttrs.numKvHeads)
        || differs(query.d[3], mAttrs.headDim) || differs(key.d[3], mAttrs.headDim))
    {
        return "query/key head counts or head_dim disagree with num_heads=" + std::to_string(mAttrs.numHeads)
            + ", num_kv_heads=" + std::to_string(mAttrs.numKvHeads) + ", head_dim=" + std::to_string(mAttrs.headDim);
    }
    if (differs(key.d[0], query.d[0]) || differs(probes.d[0], query.d[0]) || differs(key.d[2], query.d[2]))
    {
        return "query, key and probes disagree on B or n";
    }
    if (query.d[2] >= 0 && probes.d[1] > query.d[2])
    {
        return "more probes (m) than tokens (n)";
    }
    return {};
}

int32_t ZipVLTokenSelectPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError(kName, "expects 3 inputs and 3 outputs");
        return -1;
    }
    std::string const error = checkDims(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims);
    if (!error.empty())
    {
        logError(kName, error);
        return -1;
    }
    return 0;
}

int32_t ZipVLTokenSelectPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    outputTypes[2] = DataType::kFLOAT;
    return 0;
}

int32_t ZipVLTokenSelectPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[0].nbDims != 4 || inputs[1].nbDims != 4
        || inputs[2].nbDims != 2)
    {
        logError(kName, "expected query (B,H,n,d), key (B,H_kv,n,d) and probes (B,m)");
        return -1;
    }
    // Fixed capacity n: the kept count is data, not shape (no data-dependent shapes, CUDA-graph friendly).
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[2];
    outputs[1].nbDims = 1;
    outputs[1].d[0] = inputs[0].d[0];
    outputs[2] = outputs[0];
    return 0;
}

bool ZipVLTokenSelectPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return isActivationType(desc.type);              // query
    case 1: return desc.type == inOut[0].desc.type;          // key: same type as query
    case 2:                                                  // probes
    case 3:                                                  // kept_indices
    case 4: return desc.type == DataType::kINT32;            // kept_count
    case 5: return desc.type == DataType::kFLOAT;            // mass
    default: return false;
    }
}

size_t ZipVLTokenSelectPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs != kNbInputs)
    {
        return 0;
    }
    Dims const& q = inputs[0].max;
    Dims const& probes = inputs[2].max;
    auto const atLeastOne = [](int64_t v) { return static_cast<int32_t>(v < 1 ? 1 : v); };
    return kernels::tokenSelectWorkspaceSize(
        atLeastOne(q.d[0]), mAttrs.numHeads, atLeastOne(q.d[2]), atLeastOne(probes.d[1]));
}

int32_t ZipVLTokenSelectPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    std::string const error = checkDims(in[0].dims, in[1].dims, in[2].dims);
    if (!error.empty())
    {
        logError(kName, error);
        return -1;
    }
    return 0;
}

int32_t ZipVLTokenSelectPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& q = inputDesc[0].dims;
    kernels::TokenSelectParams p;
    if (!toKernelDType(inputDesc[0].type, p.dtype))
    {
        logError(kName, "unsupported query type");
        return -1;
    }
    p.query = inputs[0];
    p.key = inputs[1];
    p.probes = static_cast<int32_t const*>(inputs[2]);
    p.batch = static_cast<int32_t>(q.d[0]);
    p.numHeads = mAttrs.numHeads;
    p.numKvHeads = mAttrs.numKvHeads;
    p.seqLen = static_cast<int32_t>(q.d[2]);
    p.headDim = mAttrs.headDim;
    p.numProbes = static_cast<int32_t>(inputDesc[2].dims.d[1]);
    p.tau = mAttrs.tau;
    p.scaling = mAttrs.scaling;
    p.keptIndices = static_cast<int32_t*>(outputs[0]);
    p.keptCount = static_cast<int32_t*>(outputs[1]);
    p.mass = static_cast<float*>(outputs[2]);
    // TensorRT allocated the size for the profile's max shapes, which covers this (smaller) shape.
    size_t const bytes = kernels::tokenSelectWorkspaceSize(p.batch, p.numHeads, p.seqLen, p.numProbes);
    int32_t const status = kernels::launchTokenSelect(p, workspace, bytes, stream);
    if (status != ZIPVL_STATUS_OK)
    {
        std::string msg = zipvlStatusString(status);
        if (status == ZIPVL_STATUS_CUDA)
        {
            msg += std::string(": ") + cudaGetErrorString(kernels::lastCudaError());
        }
        logError(kName, msg);
        return -1;
    }
    return 0;
}

IPluginV3* ZipVLTokenSelectPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* ZipVLTokenSelectPlugin::getFieldsToSerialize() noexcept
{
    mSerialFields = toFields(mAttrs.fields());
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

ZipVLTokenSelectCreator::ZipVLTokenSelectCreator()
{
    mFields = toFields(mDeclared.fields());
    for (PluginField& f : mFields)
    {
        f.data = nullptr; // names and types only
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* ZipVLTokenSelectCreator::getPluginName() const noexcept
{
    return kName;
}

char const* ZipVLTokenSelectCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ZipVLTokenSelectCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* ZipVLTokenSelectCreator::getFieldNames() noexcept
{
    return &mCollection;
}

IPluginV3* ZipVLTokenSelectCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        TokenSelectAttrs attrs;
        std::string error;
        if (!parseAttributes(fc, attrs.fields(), error) || !(error = attrs.check()).empty())
        {
            logError(kName, std::string("node '") + (name ? name : "") + "': " + error);
            return nullptr;
        }
        return new ZipVLTokenSelectPlugin(attrs);
    }
    catch (std::exception const& e)
    {
        logError(kName, e.what());
        return nullptr;
    }
}

} // namespace plugin
} // namespace zipvl
