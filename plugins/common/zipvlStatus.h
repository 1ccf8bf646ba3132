// SPDX-License-Identifier: Apache-2.0
//! Status codes shared by the CPU twin, the CUDA launchers and their C entry points (plain C, ctypes-friendly).
#ifndef ZIPVL_STATUS_H
#define ZIPVL_STATUS_H

#define ZIPVL_STATUS_OK 0
#define ZIPVL_STATUS_BAD_SHAPE 1      /* a dimension is out of range or the shapes disagree */
#define ZIPVL_STATUS_BAD_PROBES 2     /* probes not strictly ascending in [0, n) or last != n - 1 */
#define ZIPVL_STATUS_BAD_INDICES 3    /* kept_indices / kept_count violate the contract */
#define ZIPVL_STATUS_BAD_ARGUMENT 4   /* tau outside (0, 1], null pointer, unknown dtype */
#define ZIPVL_STATUS_WORKSPACE 5      /* the workspace is smaller than required */
#define ZIPVL_STATUS_CUDA 6           /* a CUDA call failed (see the CUDA error string) */
#define ZIPVL_STATUS_UNSUPPORTED 7    /* head_dim above the kernels' limit, or B * n beyond the sort key */

#ifdef __cplusplus
inline char const* zipvlStatusString(int status)
{
    switch (status)
    {
    case ZIPVL_STATUS_OK: return "ok";
    case ZIPVL_STATUS_BAD_SHAPE: return "bad shape: a dimension is out of range or the inputs disagree";
    case ZIPVL_STATUS_BAD_PROBES: return "bad probes: need strictly ascending positions in [0, n) ending at n - 1";
    case ZIPVL_STATUS_BAD_INDICES: return "bad kept_indices/kept_count: need 0 <= count <= n and ascending indices";
    case ZIPVL_STATUS_BAD_ARGUMENT: return "bad argument: tau outside (0, 1], null pointer or unknown dtype";
    case ZIPVL_STATUS_WORKSPACE: return "workspace too small";
    case ZIPVL_STATUS_CUDA: return "CUDA error";
    case ZIPVL_STATUS_UNSUPPORTED: return "unsupported: head_dim > 256 or batch * n too large for the sort key";
    default: return "unknown status";
    }
}
#endif

#endif // ZIPVL_STATUS_H
