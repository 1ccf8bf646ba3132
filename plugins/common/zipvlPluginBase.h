// SPDX-License-Identifier: Apache-2.0
//! The TensorRT boilerplate both zipvl plugins share: a CRTP plugin base (capabilities, identity, clone, attach,
//! serialisation, I/O count, format and dims checks, kernel launch reporting) and a creator template. A plugin supplies
//! only its constants (kName, kNbInputs, kNbOutputs), checkDims, and its types, shapes, formats, workspace and
//! enqueue launch.
#ifndef ZIPVL_PLUGIN_BASE_H
#define ZIPVL_PLUGIN_BASE_H

#include <NvInferRuntime.h>

#include <exception>
#include <string>
#include <vector>

#include "zipvlKernelParams.h"
#include "zipvlPluginUtils.h"

namespace zipvl
{
namespace plugin
{

//! `Interface` (IPluginV3OneCore or IPluginCreatorV3One) answering name Named::kName, version kPluginVersion and
//! namespace kPluginNamespace: the identity a plugin and its creator must share.
template <class Interface, class Named>
class ZipVLIdentity : public Interface
{
public:
    //! Named::kName (the ONNX op type).
    char const* getPluginName() const noexcept override
    {
        return Named::kName;
    }
    //! kPluginVersion ("1").
    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }
    //! kPluginNamespace ("zipvl").
    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }
};

//! IPluginV3 with its core, build and runtime capabilities on one object. `Derived` provides `static constexpr`
//! kName / kNbInputs / kNbOutputs, a constructor from `AttrsT`, `std::string checkDims(Dims const*) const` (empty
//! when the input dims agree with the attributes), `void setOutputTypes(DataType*, DataType const*) const` and
//! `static bool supportsType(int32_t pos, DataType type, DataType queryType)`; `AttrsT` is a HeadAttrs with
//! `std::vector<Attribute> fields()`.
template <class Derived, class AttrsT>
class ZipVLPluginBase : public nvinfer1::IPluginV3,
                        public ZipVLIdentity<nvinfer1::IPluginV3OneCore, Derived>,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime
{
public:
    //! The node attributes type (the creator parses and checks it).
    using Attrs = AttrsT;

    //! Builds the plugin from validated attributes.
    explicit ZipVLPluginBase(Attrs const& attrs)
        : mAttrs(attrs)
    {
    }
    //! Nothing to release: the plugin owns no device resources.
    ~ZipVLPluginBase() override = default;

    //! Returns this object as the requested capability (core, build or runtime).
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    //! Deep copy (TensorRT owns and deletes it).
    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(mAttrs); // fresh field storage: never share pointers with this object
        }
        catch (std::exception const& e)
        {
            logError(Derived::kName, e.what());
            return nullptr;
        }
    }

    //! Derived::kNbOutputs.
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNbOutputs;
    }

    //! -1 for the wrong numbers of inputs / outputs, else Derived::setOutputTypes (from the input types) and 0.
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (!hasIOCounts(nbInputs, nbOutputs))
        {
            return -1;
        }
        static_cast<Derived const*>(this)->setOutputTypes(outputTypes, inputTypes);
        return 0;
    }

    //! Linear tensors only; the type at `pos` is Derived::supportsType's call (given query's type).
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        if (!hasIOCounts(nbInputs, nbOutputs) || pos < 0 || pos >= Derived::kNbInputs + Derived::kNbOutputs)
        {
            return false;
        }
        nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR)
        {
            return false;
        }
        return Derived::supportsType(pos, desc.type, inOut[0].desc.type);
    }

    //! Checks that static head counts / head_dim agree with the attributes.
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept override
    {
        if (!hasIOCounts(nbInputs, nbOutputs))
        {
            logError(Derived::kName,
                "expects " + std::to_string(Derived::kNbInputs) + " inputs and " + std::to_string(Derived::kNbOutputs)
                    + " outputs");
            return -1;
        }
        nvinfer1::Dims dims[Derived::kNbInputs];
        for (int32_t i = 0; i < Derived::kNbInputs; ++i)
        {
            dims[i] = in[i].desc.dims;
        }
        return checkDimsLogged(dims);
    }

    //! Re-checks the runtime shapes.
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const*,
        int32_t nbOutputs) noexcept override
    {
        if (!hasIOCounts(nbInputs, nbOutputs))
        {
            return -1;
        }
        nvinfer1::Dims dims[Derived::kNbInputs];
        for (int32_t i = 0; i < Derived::kNbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        return checkDimsLogged(dims);
    }

    //! A clone per execution context (the plugin holds no per-context resources).
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    //! The attributes as kFLOAT32 / kINT32 fields; the creator rebuilds the plugin from them at runtime.
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mSerialFields = toFields(mAttrs.fields());
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }

protected:
    //! True when TensorRT passes the plugin's numbers of inputs and outputs.
    static bool hasIOCounts(int32_t nbInputs, int32_t nbOutputs) noexcept
    {
        return nbInputs == Derived::kNbInputs && nbOutputs == Derived::kNbOutputs;
    }

    //! Fills what both kernels' params share (dtype, query, key, B, H, H_kv, n, d, scaling) from query's desc and
    //! the attributes; false (logged) when query's type is not one the kernels take.
    template <class Params>
    bool setCommonParams(Params& p, nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs) const noexcept
    {
        if (!toKernelDType(inputDesc[0].type, p.dtype))
        {
            logError(Derived::kName, "unsupported query type");
            return false;
        }
        nvinfer1::Dims const& q = inputDesc[0].dims;
        kernels::setSharedParams(p, inputs[0], inputs[1], static_cast<int32_t>(q.d[0]), mAttrs.numHeads,
            mAttrs.numKvHeads, static_cast<int32_t>(q.d[2]), mAttrs.headDim, mAttrs.scaling);
        return true;
    }

    //! enqueue's return value for a launcher's ZIPVL_STATUS_* code: 0 for ok, else -1 with the reason logged.
    static int32_t launchResult(int32_t status) noexcept
    {
        return reportKernelStatus(Derived::kName, status);
    }

    Attrs mAttrs; //!< the validated node attributes

private:
    //! Derived::checkDims on `dims`: 0 when they agree, else -1 with the reason logged.
    int32_t checkDimsLogged(nvinfer1::Dims const* dims) const noexcept
    {
        std::string const error = static_cast<Derived const*>(this)->checkDims(dims);
        if (!error.empty())
        {
            logError(Derived::kName, error);
            return -1;
        }
        return 0;
    }

    std::vector<nvinfer1::PluginField> mSerialFields;     //!< storage behind mSerialCollection
    nvinfer1::PluginFieldCollection mSerialCollection{}; //!< what getFieldsToSerialize returns
};

//! Creator of `Plugin` registered under name Plugin::kName, version kPluginVersion, namespace kPluginNamespace.
template <class Plugin>
class ZipVLCreatorBase : public ZipVLIdentity<nvinfer1::IPluginCreatorV3One, Plugin>
{
public:
    //! The node attributes type of Plugin.
    using Attrs = typename Plugin::Attrs;

    //! Declares the attribute fields (names and types of Attrs::fields(), no data).
    ZipVLCreatorBase()
    {
        Attrs declared;
        mFields = toFields(declared.fields());
        for (nvinfer1::PluginField& f : mFields)
        {
            f.data = nullptr; // names and types only
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }
    //! Nothing to release.
    ~ZipVLCreatorBase() override = default;

    //! The attribute fields the ONNX parser forwards (others are dropped by the parser).
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }

    //! Parses the fields whatever their numeric type (build: ONNX attributes; runtime: serialised fields).
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override
    {
        try
        {
            Attrs attrs;
            std::string error;
            if (!parseAttributes(fc, attrs.fields(), error) || !(error = attrs.check()).empty())
            {
                logError(Plugin::kName, std::string("node '") + (name ? name : "") + "': " + error);
                return nullptr;
            }
            return new Plugin(attrs);
        }
        catch (std::exception const& e)
        {
            logError(Plugin::kName, e.what());
            return nullptr;
        }
    }

private:
    std::vector<nvinfer1::PluginField> mFields;     //!< declared fields (data null)
    nvinfer1::PluginFieldCollection mCollection{}; //!< what getFieldNames returns
};

} // namespace plugin
} // namespace zipvl

#endif // ZIPVL_PLUGIN_BASE_H
