// SPDX-License-Identifier: Apache-2.0
// ZipVLTokenSelect plugin: TensorRT glue around tokenSelectKernels.h (the shared parts live in zipvlPluginBase.h).
#include "ZipVLTokenSelectPlugin.h"

#include "tokenSelectKernels.h"

using namespace nvinfer1;

namespace zipvl
{
namespace plugin
{

std::vector<Attribute> TokenSelectAttrs::fields()
{
    std::vector<Attribute> all{{"tau", PluginFieldType::kFLOAT32, &tau}};
    std::vector<Attribute> const heads = HeadAttrs::fields();
    all.insert(all.end(), heads.begin(), heads.end());
    return all;
}

std::string TokenSelectAttrs::check() const
{
    if (!(tau > 0.0f && tau <= 1.0f))
    {
        return "tau must be in (0, 1], got " + std::to_string(tau);
    }
    return HeadAttrs::check();
}

std::string ZipVLTokenSelectPlugin::checkDims(Dims const* in) const
{
    Dims const &query = in[0], &key = in[1], &probes = in[2];
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

void ZipVLTokenSelectPlugin::setOutputTypes(DataType* outputTypes, DataType const*) const noexcept
{
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    outputTypes[2] = DataType::kFLOAT;
}

int32_t ZipVLTokenSelectPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (!hasIOCounts(nbInputs, nbOutputs) || inputs[0].nbDims != 4 || inputs[1].nbDims != 4 || inputs[2].nbDims != 2)
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

bool ZipVLTokenSelectPlugin::supportsType(int32_t pos, DataType type, DataType queryType) noexcept
{
    switch (pos)
    {
    case 0: return isActivationType(type);        // query
    case 1: return type == queryType;             // key: same type as query
    case 2:                                       // probes
    case 3:                                       // kept_indices
    case 4: return type == DataType::kINT32;      // kept_count
    case 5: return type == DataType::kFLOAT;      // mass
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

int32_t ZipVLTokenSelectPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    kernels::TokenSelectParams p;
    if (!setCommonParams(p, inputDesc, inputs))
    {
        return -1;
    }
    p.probes = static_cast<int32_t const*>(inputs[2]);
    p.numProbes = static_cast<int32_t>(inputDesc[2].dims.d[1]);
    p.tau = mAttrs.tau;
    p.keptIndices = static_cast<int32_t*>(outputs[0]);
    p.keptCount = static_cast<int32_t*>(outputs[1]);
    p.mass = static_cast<float*>(outputs[2]);
    // TensorRT allocated the size for the profile's max shapes, which covers this (smaller) shape.
    size_t const bytes = kernels::tokenSelectWorkspaceSize(p.batch, p.numHeads, p.seqLen, p.numProbes);
    return launchResult(kernels::launchTokenSelect(p, workspace, bytes, stream));
}

} // namespace plugin
} // namespace zipvl
