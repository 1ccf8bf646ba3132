// SPDX-License-Identifier: Apache-2.0
// CPU twin of ZipVLSparseAttention (method steps 6-7): causal attention over the kept tokens in original order,
// zero rows elsewhere, and K/V compacted to the kept tokens.
#include "zipvl_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

namespace
{

bool keptValid(int32_t const* idx, int32_t count, int32_t n)
{
    if (count < 0 || count > n)
    {
        return false;
    }
    for (int32_t i = 0; i < count; ++i)
    {
        if (idx[i] < 0 || idx[i] >= n || (i > 0 && idx[i] <= idx[i - 1]))
        {
            return false;
        }
    }
    return true;
}

// One (sequence, query head): softmax over the kept keys j <= i (compacted order = original order).
void attendHead(float const* q, float const* k, float const* v, int32_t const* idx, int32_t count, int32_t d,
    float scaling, float* out)
{
    std::vector<float> p(count);
    std::vector<double> acc(d);
    for (int32_t i = 0; i < count; ++i)
    {
        float const* qi = q + static_cast<size_t>(idx[i]) * d;
        float maxS = -std::numeric_limits<float>::infinity();
        for (int32_t j = 0; j <= i; ++j)
        {
            float const* kj = k + static_cast<size_t>(idx[j]) * d;
            double dot = 0.0;
            for (int32_t c = 0; c < d; ++c)
            {
                dot += static_cast<double>(qi[c]) * kj[c];
            }
            p[j] = static_cast<float>(dot) * scaling;
            maxS = std::max(maxS, p[j]);
        }
        double sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int32_t j = 0; j <= i; ++j)
        {
            double const e = std::exp(static_cast<double>(p[j]) - maxS);
            sum += e;
            float const* vj = v + static_cast<size_t>(idx[j]) * d;
            for (int32_t c = 0; c < d; ++c)
            {
                acc[c] += e * vj[c];
            }
        }
        float* oi = out + static_cast<size_t>(idx[i]) * d;
        for (int32_t c = 0; c < d; ++c)
        {
            oi[c] = static_cast<float>(acc[c] / sum);
        }
    }
}

// Step 7: rows [0, count) are the kept rows in ascending position order, the rest zero.
void compactHead(float const* src, int32_t const* idx, int32_t count, int32_t n, int32_t d, float* dst)
{
    for (int32_t i = 0; i < count; ++i)
    {
        std::memcpy(dst + static_cast<size_t>(i) * d, src + static_cast<size_t>(idx[i]) * d, sizeof(float) * d);
    }
    std::fill(dst + static_cast<size_t>(count) * d, dst + static_cast<size_t>(n) * d, 0.0f);
}

} // namespace

extern "C" int32_t zipvl_cpu_sparse_attention_f32(float const* query, float const* key, float const* value,
    int32_t const* kept_indices, int32_t const* kept_count, int32_t batch, int32_t num_heads, int32_t num_kv_heads,
    int32_t seq_len, int32_t head_dim, float scaling, float* attn_out, float* key_compact, float* value_compact)
{
    if (!query || !key || !value || !kept_indices || !kept_count || !attn_out || !key_compact || !value_compact)
    {
        return ZIPVL_STATUS_BAD_ARGUMENT;
    }
    if (batch < 1 || num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || seq_len < 1
        || head_dim < 1)
    {
        return ZIPVL_STATUS_BAD_SHAPE;
    }
    int32_t const H = num_heads, Hkv = num_kv_heads, n = seq_len, d = head_dim, g = H / Hkv;
    for (int32_t b = 0; b < batch; ++b)
    {
        if (!keptValid(kept_indices + static_cast<size_t>(b) * n, kept_count[b], n))
        {
            return ZIPVL_STATUS_BAD_INDICES;
        }
    }
    size_t const qHead = static_cast<size_t>(n) * d;
    std::fill(attn_out, attn_out + static_cast<size_t>(batch) * H * qHead, 0.0f);
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t const* idx = kept_indices + static_cast<size_t>(b) * n;
        int32_t const count = kept_count[b];
        for (int32_t h = 0; h < H; ++h)
        {
            size_t const kvOff = (static_cast<size_t>(b) * Hkv + h / g) * qHead;
            size_t const qOff = (static_cast<size_t>(b) * H + h) * qHead;
            attendHead(query + qOff, key + kvOff, value + kvOff, idx, count, d, scaling, attn_out + qOff);
        }
        for (int32_t hk = 0; hk < Hkv; ++hk)
        {
            size_t const kvOff = (static_cast<size_t>(b) * Hkv + hk) * qHead;
            compactHead(key + kvOff, idx, count, n, d, key_compact + kvOff);
            compactHead(value + kvOff, idx, count, n, d, value_compact + kvOff);
        }
    }
    return ZIPVL_STATUS_OK;
}
