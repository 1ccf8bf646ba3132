// SPDX-License-Identifier: Apache-2.0
// ZipVLSparseAttention plugin: TensorRT glue around sparseAttentionKernels.h (the shared parts live in
// zipvlPluginBase.h).
#include "ZipVLSparseAttentionPlugin.h"

#include "sparseAttentionKernels.h"

using namespace nvinfer1;

namespace zipvl
{
namespace plugin
{

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

void ZipVLSparseAttentionPlugin::setOutputTypes(DataType* outputTypes, DataType const* inputTypes) const noexcept
{
    for (int32_t i = 0; i < kNbOutputs; ++i)
    {
        outputTypes[i] = inputTypes[0];
    }
}

int32_t ZipVLSparseAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (!hasIOCounts(nbInputs, nbOutputs) || inputs[0].nbDims != 4 || inputs[1].nbDims != 4 || inputs[2].nbDims != 4)
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

bool ZipVLSparseAttentionPlugin::supportsType(int32_t pos, DataType type, DataType queryType) noexcept
{
    switch (pos)
    {
    case 0: return isActivationType(type);   // query
    case 3:                                  // kept_indices
    case 4: return type == DataType::kINT32; // kept_count
    default: return type == queryType;       // key, value and the three outputs: query's type
    }
}

size_t ZipVLSparseAttentionPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return 0;
}

int32_t ZipVLSparseAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    kernels::SparseAttentionParams p;
    if (!setCommonParams(p, inputDesc, inputs))
    {
        return -1;
    }
    p.value = inputs[2];
    p.keptIndices = static_cast<int32_t const*>(inputs[3]);
    p.keptCount = static_cast<int32_t const*>(inputs[4]);
    p.attnOut = outputs[0];
    p.keyCompact = outputs[1];
    p.valueCompact = outputs[2];
    return launchResult(kernels::launchSparseAttention(p, stream));
}

} // namespace plugin
} // namespace zipvl
