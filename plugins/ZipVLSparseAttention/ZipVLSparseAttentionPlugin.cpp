// SPDX-License-Identifier: Apache-2.0
// ZipVLSparseAttention plugin and creator: TensorRT glue around sparseAttentionKernels.h.
#include "ZipVLSparseAttentionPlugin.h"

#include <exception>

#include "../ZipVLTokenSelect/tokenSelectKernels.h"
#include "../common/zipvlStatus.h"
#include "sparseAttentionKernels.h"

using namespace nvinfer1;

namespace zipvl
{
namespace plugin
{
namespace
{

constexpr char const* kName = "ZipVLSparseAttention";
constexpr int32_t kNbInputs = 5;  // query, key, value, kept_indices, kept_count
constexpr int32_t kNbOutputs = 3; // attn_out, key_compact, value_compact

bool differs(int64_t actual, int64_t expected)
{
    return actual >= 0 && expected >= 0 && actual != expected;
}

} // namespace

std::vector<Attribute> SparseAttentionAttrs::fields()
{
    return {{"scaling", PluginFieldType::kFLOAT32, &scaling}, {"num_heads", PluginFieldType::kINT32, &numHeads},
        {"num_kv_heads", PluginFieldType::kINT32, &numKvHeads}, {"head_dim", PluginFieldType::kINT32, &headDim}};
}

std::string SparseAttentionAttrs::check() const
{
    return checkHeads(numHeads, numKvHeads, headDim, scaling);
}

ZipVLSparseAttentionPlugin::ZipVLSparseAttentionPlugin(SparseAttentionAttrs const& attrs)
    : mAttrs(attrs)
{
}

IPluginCapability* ZipVLSparseAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* ZipVLSparseAttentionPlugin::clone() noexcept
{
    try
    {
        return new ZipVLSparseAttentionPlugin(mAttrs); // fresh field storage: never share pointers with this object
    }
    catch (std::exception const& e)
    {
        logError(kName, e.what());
        return nullptr;
    }
}

char const* ZipVLSparseAttentionPlugin::getPluginName() const noexcept
{
    return kName;
}

char const* ZipVLSparseAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ZipVLSparseAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t ZipVLSparseAttentionPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

std::string ZipVLSparseAttentionPlugin::checkDims(Dims const* in) const
{
    Dims const &q = in[0], &k = in[1], &v = in[2], &idx = in[3], &count = in[4];
    if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4 || idx.nbDims != 2 || count.nbDims != 1)
    {
        return "expected query (B,H,n,d), key/value (B,H_kv,n,d), kept_indices (B,n) and kept_count (B,)";
    }
    if (differs(q.d[1], mAttrs.numHeads) || differs(k.d[1], mAttrs.numKvHeads) || differs(v.d[1], mAttrs.numKvHeads)
        || differs(q.d[3], mAttrs.headDim) || differs(k.d[3], mAttrs.headDim) || differs(v.d[3], mAttrs.headDim))
    {
        return "query/key/value head counts or head_dim disagree with num_heads=" + std::to_string(mAttrs.numHeads)
            + ", num_kv_heads=" + std::to_string(mAttrs.numKvHeads) + ", head_dim=" + std::to_string(mAttrs.headDim);
    }
    for (Dims const* other : {&k, &v, &idx, &count})
    {
        if (differs(other->d[0], q.d[0]))
        {
            return "inputs disagree on the batch size B";
        }
    }
    if (differs(k.d[2], q.d[2]) || differs(v.d[2], q.d[2]) || differs(idx.d[1], q.d[2]))
    {
        return "inputs disagree on the sequence length n";
    }
    return {};
}

int32_t ZipVLSparseAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError(kName, "expects 5 inputs and 3 outputs");
        return -1;
    }
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    std::string const error = checkDims(dims);
    if (!error.empty())
    {
        logError(kName, error);
        return -1;
    }
    return 0;
}

int32_t ZipVLSparseAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    for (int32_t i = 0; i < kNbOutputs; ++i)
    {
        outputTypes[i] = inputTypes[0];
    }
    return 0;
}

int32_t ZipVLSparseAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[0].nbDims != 4 || inputs[1].nbDims != 4
        || inputs[2].nbDims != 4)
    {
        logError(kName, "expected query (B,H,n,d) and key/value (B,H_kv,n,d)");
        return -1;
    }
    // Fixed capacity n for the compacted cache: the first kept_count[b] rows are live, the rest zero.
    outputs[0] = inputs[0];
    outputs[1] = inputs[1];
    outputs[2] = inputs[2];
    return 0;
}

bool ZipVLSparseAttentionPlugin::supportsFormatCombination(
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
    case 0: return isActivationType(desc.type);   // query
    case 3:                                       // kept_indices
    case 4: return desc.type == DataType::kINT32; // kept_count
    default: return desc.type == inOut[0].desc.type; // key, value and the three outputs: query's type
    }
}

size_t ZipVLSparseAttentionPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return 0;
}

int32_t ZipVLSparseAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    std::string const error = checkDims(dims);
    if (!error.empty())
    {
        logError(kName, error);
        return -1;
    }
    return 0;
}

int32_t ZipVLSparseAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& q = inputDesc[0].dims;
    kernels::SparseAttentionParams p;
    if (!toKernelDType(inputDesc[0].type, p.dtype))
    {
        logError(kName, "unsupported query type");
        return -1;
    }
    p.query = inputs[0];
    p.key = inputs[1];
    p.value = inputs[2];
    p.keptIndices = static_cast<int32_t const*>(inputs[3]);
    p.keptCount = static_cast<int32_t const*>(inputs[4]);
    p.batch = static_cast<int32_t>(q.d[0]);
    p.numHeads = mAttrs.numHeads;
    p.numKvHeads = mAttrs.numKvHeads;
    p.seqLen = static_cast<int32_t>(q.d[2]);
    p.headDim = mAttrs.headDim;
    p.scaling = mAttrs.scaling;
    p.attnOut = outputs[0];
    p.keyCompact = outputs[1];
    p.valueCompact = outputs[2];
    int32_t const status = kernels::launchSparseAttention(p, stream);
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

IPluginV3* ZipVLSparseAttentionPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* ZipVLSparseAttentionPlugin::getFieldsToSerialize() noexcept
{
    mSerialFields = toFields(mAttrs.fields());
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

ZipVLSparseAttentionCreator::ZipVLSparseAttentionCreator()
{
    mFields = toFields(mDeclared.fields());
    for (PluginField& f : mFields)
    {
        f.data = nullptr; // names and types only
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* ZipVLSparseAttentionCreator::getPluginName() const noexcept
{
    return kName;
}

char const* ZipVLSparseAttentionCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ZipVLSparseAttentionCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* ZipVLSparseAttentionCreator::getFieldNames() noexcept
{
    return &mCollection;
}

IPluginV3* ZipVLSparseAttentionCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        SparseAttentionAttrs attrs;
        std::string error;
        if (!parseAttributes(fc, attrs.fields(), error) || !(error = attrs.check()).empty())
        {
            logError(kName, std::string("node '") + (name ? name : "") + "': " + error);
            return nullptr;
        }
        return new ZipVLSparseAttentionPlugin(attrs);
    }
    catch (std::exception const& e)
    {
        logError(kName, e.what());
        return nullptr;
    }
}

} // namespace plugin
} // namespace zipvl
