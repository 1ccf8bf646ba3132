// SPDX-License-Identifier: Apache-2.0
//! Element types the kernels accept, independent of TensorRT so the C entry points and the plugins share them.
#ifndef ZIPVL_DTYPE_H
#define ZIPVL_DTYPE_H

#include <cstdint>

namespace zipvl
{

//! Floating-point type of query/key/value (accumulation is always fp32). Values match the C API's dtype codes.
enum class DType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
    kBFLOAT16 = 2,
};

//! Size in bytes of one element of `t`.
inline int32_t dtypeSize(DType t)
{
    return t == DType::kFLOAT32 ? 4 : 2;
}

} // namespace zipvl

#endif // ZIPVL_DTYPE_H
