// SPDX-License-Identifier: Apache-2.0
// CPU twin of ZipVLTokenSelect (method steps 2-5), written to follow zipvl/reference/selection.py step by step.
#include "zipvl_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

namespace
{

bool probesValid(int32_t const* probes, int32_t m, int32_t n)
{
    for (int32_t i = 0; i < m; ++i)
    {
        if (probes[i] < 0 || probes[i] >= n || (i > 0 && probes[i] <= probes[i - 1]))
        {
            return false;
        }
    }
    // The last position is always a probe, which keeps every visibility count c_j > 0.
    return probes[m - 1] == n - 1;
}

// Steps 2-3 for one sequence: mass_j = sum over heads and probe rows of softmax(q_r . k_j * scaling), j <= r.
void probeMass(float const* q, float const* k, int32_t const* probes, int32_t H, int32_t Hkv, int32_t n, int32_t d,
    int32_t m, float scaling, float* mass)
{
    int32_t const g = H / Hkv;
    std::vector<double> acc(n, 0.0); // fp64 accumulation: the order of the sum then barely matters
    std::vector<float> s(n);
    for (int32_t h = 0; h < H; ++h)
    {
        float const* kh = k + static_cast<size_t>(h / g) * n * d;
        for (int32_t r = 0; r < m; ++r)
        {
            int32_t const pos = probes[r];
            float const* qr = q + (static_cast<size_t>(h) * n + pos) * d;
            float maxS = -std::numeric_limits<float>::infinity();
            for (int32_t j = 0; j <= pos; ++j)
            {
                double dot = 0.0;
                for (int32_t c = 0; c < d; ++c)
                {
                    dot += static_cast<double>(qr[c]) * kh[static_cast<size_t>(j) * d + c];
                }
                s[j] = static_cast<float>(dot) * scaling;
                maxS = std::max(maxS, s[j]);
            }
            double sum = 0.0;
            for (int32_t j = 0; j <= pos; ++j)
            {
                s[j] = std::exp(s[j] - maxS);
                sum += s[j];
            }
            float const inv = static_cast<float>(1.0 / sum);
            for (int32_t j = 0; j <= pos; ++j)
            {
                acc[j] += s[j] * inv;
            }
        }
    }
    for (int32_t j = 0; j < n; ++j)
    {
        mass[j] = static_cast<float>(acc[j]);
    }
}

// Step 4: smallest p whose descending-sorted mass reaches tau * total; fp64 cumulative sum, like the reference.
int32_t adaptiveCount(float const* mass, int32_t n, float tau, double total)
{
    if (tau >= 1.0f)
    {
        return n;
    }
    std::vector<double> sorted(mass, mass + n);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    double const threshold = static_cast<double>(tau) * total;
    double cumulative = 0.0;
    int32_t below = 0;
    for (int32_t i = 0; i < n; ++i)
    {
        cumulative += sorted[i];
        below += cumulative < threshold ? 1 : 0;
    }
    return std::min(below + 1, n);
}

// Step 5: keep the `count` largest a_j / c_j (ties to the lower position), written ascending, padded with -1.
void keepTopScores(float const* mass, int32_t const* probes, int32_t H, int32_t n, int32_t m, int32_t count,
    int32_t* keptIndices)
{
    std::vector<float> score(n);
    for (int32_t j = 0, before = 0; j < n; ++j)
    {
        while (before < m && probes[before] < j)
        {
            ++before; // probes[before..] are the probe rows that can see key j
        }
        score[j] = mass[j] / static_cast<float>(H * (m - before));
    }
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
    std::vector<char> kept(n, 0);
    for (int32_t i = 0; i < count; ++i)
    {
        kept[order[i]] = 1;
    }
    int32_t out = 0;
    for (int32_t j = 0; j < n; ++j)
    {
        if (kept[j])
        {
            keptIndices[out++] = j;
        }
    }
    std::fill(keptIndices + out, keptIndices + n, -1);
}

} // namespace

extern "C" int32_t zipvl_cpu_abi_version(void)
{
    return 1;
}

extern "C" char const* zipvl_cpu_status_string(int32_t status)
{
    return zipvlStatusString(status);
}

extern "C" int32_t zipvl_cpu_token_select_f32(float const* query, float const* key, int32_t const* probes,
    int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t seq_len, int32_t head_dim, int32_t num_probes,
    float tau, float scaling, int32_t* kept_indices, int32_t* kept_count, float* mass)
{
    if (!query || !key || !probes || !kept_indices || !kept_count || !mass || !(tau > 0.0f && tau <= 1.0f))
    {
        return ZIPVL_STATUS_BAD_ARGUMENT;
    }
    if (batch < 1 || num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || seq_len < 1
        || head_dim < 1 || num_probes < 1 || num_probes > seq_len)
    {
        return ZIPVL_STATUS_BAD_SHAPE;
    }
    int32_t const H = num_heads, n = seq_len, d = head_dim, m = num_probes;
    for (int32_t b = 0; b < batch; ++b)
    {
        if (!probesValid(probes + static_cast<size_t>(b) * m, m, n))
        {
            return ZIPVL_STATUS_BAD_PROBES;
        }
    }
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t const* pb = probes + static_cast<size_t>(b) * m;
        float* massB = mass + static_cast<size_t>(b) * n;
        probeMass(query + static_cast<size_t>(b) * H * n * d, key + static_cast<size_t>(b) * num_kv_heads * n * d,
            pb, H, num_kv_heads, n, d, m, scaling, massB);
        // Every probe row of every head sums to 1, so the total mass is H * m.
        kept_count[b] = adaptiveCount(massB, n, tau, static_cast<double>(H) * m);
        keepTopScores(massB, pb, H, n, m, kept_count[b], kept_indices + static_cast<size_t>(b) * n);
    }
    return ZIPVL_STATUS_OK;
}
