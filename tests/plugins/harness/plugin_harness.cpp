// SPDX-License-Identifier: Apache-2.0
// Exercises libzipvl_plugins.so the way TensorRT does, without libnvinfer: dlopen, getCreators, createPlugin from
// ONNX-parser-like fields (INT as kINT32 or kINT64, FLOAT as kFLOAT32 or kFLOAT64, STRING as kCHAR), the build
// capability (types, shapes, formats, workspace) and the serialise -> createPlugin(kRUNTIME) round trip.
// Usage: plugin_harness <libzipvl_plugins.so>; prints one line per failed check, then "checks=N failures=M".
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gChecks = 0;
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

struct Fields
{
    std::vector<PluginField> fields;
    std::vector<int32_t> i32;
    std::vector<int64_t> i64;
    std::vector<float> f32;
    std::vector<double> f64;
    PluginFieldCollection fc{};

    Fields()
    {
        i32.reserve(16); // stable addresses
        i64.reserve(16);
        f32.reserve(16);
        f64.reserve(16);
    }
    void addInt(char const* name, int64_t v, bool wide)
    {
        if (wide)
        {
            i64.push_back(v);
            fields.emplace_back(name, &i64.back(), PluginFieldType::kINT64, 1);
        }
        else
        {
            i32.push_back(static_cast<int32_t>(v));
            fields.emplace_back(name, &i32.back(), PluginFieldType::kINT32, 1);
        }
    }
    void addFloat(char const* name, double v, bool wide)
    {
        if (wide)
        {
            f64.push_back(v);
            fields.emplace_back(name, &f64.back(), PluginFieldType::kFLOAT64, 1);
        }
        else
        {
            f32.push_back(static_cast<float>(v));
            fields.emplace_back(name, &f32.back(), PluginFieldType::kFLOAT32, 1);
        }
    }
    void addString(char const* name, char const* v)
    {
        fields.emplace_back(name, v, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(v) + 1));
    }
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

Fields attrs(bool select, bool wide, int64_t heads = 8, int64_t kvHeads = 2, double tau = 0.9, bool withTau = true)
{
    Fields f;
    f.addString("plugin_version", "1"); // the parser consumes these; a creator must ignore them
    f.addString("plugin_namespace", "zipvl");
    if (select && withTau)
    {
        f.addFloat("tau", tau, wide);
    }
    f.addFloat("scaling", 0.125, wide);
    f.addInt("num_heads", heads, wide);
    f.addInt("num_kv_heads", kvHeads, wide);
    f.addInt("head_dim", 64, wide);
    return f;
}

PluginTensorDesc desc(DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    PluginTensorDesc d{};
    d.type = type;
    d.format = format;
    return d;
}

// Reads a serialised scalar field back (they are written as kFLOAT32 / kINT32).
double fieldValue(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0)
        {
            if (fc->fields[i].type == PluginFieldType::kFLOAT32)
            {
                return *static_cast<float const*>(fc->fields[i].data);
            }
            if (fc->fields[i].type == PluginFieldType::kINT32)
            {
                return *static_cast<int32_t const*>(fc->fields[i].data);
            }
        }
    }
    return -1e30;
}

void checkTokenSelect(IPluginCreatorV3One* creator)
{
    std::string const tag = "ZipVLTokenSelect: ";
    PluginFieldCollection const* names = creator->getFieldNames();
    std::vector<std::string> got;
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        got.emplace_back(names->fields[i].name);
    }
    check(got == std::vector<std::string>{"tau", "scaling", "num_heads", "num_kv_heads", "head_dim"}, tag + "field names");

    for (bool wide : {false, true})
    {
        Fields f = attrs(true, wide);
        IPluginV3* p = creator->createPlugin("node", f.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, tag + "createPlugin with " + (wide ? "64-bit" : "32-bit") + " fields");
        delete p;
    }
    Fields noTau = attrs(true, false, 8, 2, 0.9, false);
    check(creator->createPlugin("node", noTau.get(), TensorRTPhase::kBUILD) == nullptr, tag + "missing tau rejected");
    Fields badTau = attrs(true, false, 8, 2, 1.5);
    check(creator->createPlugin("node", badTau.get(), TensorRTPhase::kBUILD) == nullptr, tag + "tau > 1 rejected");
    Fields badHeads = attrs(true, false, 6, 4);
    check(creator->createPlugin("node", badHeads.get(), TensorRTPhase::kBUILD) == nullptr, tag + "H % H_kv rejected");

    Fields f = attrs(true, false);
    IPluginV3* plugin = creator->createPlugin("node", f.get(), TensorRTPhase::kBUILD);
    if (plugin == nullptr)
    {
        check(false, tag + "no plugin to inspect");
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    check(std::strcmp(core->getPluginName(), "ZipVLTokenSelect") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0
            && std::strcmp(core->getPluginNamespace(), "zipvl") == 0,
        tag + "core identity");
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    check(build->getNbOutputs() == 3, tag + "3 outputs");
    DataType in[3] = {DataType::kHALF, DataType::kHALF, DataType::kINT32};
    DataType out[3] = {};
    check(build->getOutputDataTypes(out, 3, in, 3) == 0 && out[0] == DataType::kINT32 && out[1] == DataType::kINT32
            && out[2] == DataType::kFLOAT,
        tag + "output types int32, int32, float32");

    // Formats: pos 0 query, 1 key, 2 probes, 3 kept_indices, 4 kept_count, 5 mass.
    DynamicPluginTensorDesc io[6]{};
    for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        io[0].desc = desc(t);
        check(build->supportsFormatCombination(0, io, 3, 3), tag + "query type accepted");
        io[1].desc = desc(t);
        check(build->supportsFormatCombination(1, io, 3, 3), tag + "key of query's type accepted");
    }
    io[0].desc = desc(DataType::kHALF);
    io[1].desc = desc(DataType::kFLOAT);
    check(!build->supportsFormatCombination(1, io, 3, 3), tag + "key of another type rejected");
    io[0].desc = desc(DataType::kINT8);
    check(!build->supportsFormatCombination(0, io, 3, 3), tag + "int8 query rejected");
    io[0].desc = desc(DataType::kFLOAT, TensorFormat::kHWC8);
    check(!build->supportsFormatCombination(0, io, 3, 3), tag + "non-linear format rejected");
    for (int32_t pos : {2, 3, 4})
    {
        io[pos].desc = desc(DataType::kINT32);
        check(build->supportsFormatCombination(pos, io, 3, 3), tag + "int32 at pos " + std::to_string(pos));
        io[pos].desc = desc(DataType::kINT64);
        check(!build->supportsFormatCombination(pos, io, 3, 3), tag + "int64 rejected at pos " + std::to_string(pos));
    }
    io[5].desc = desc(DataType::kFLOAT);
    check(build->supportsFormatCombination(5, io, 3, 3), tag + "float32 mass");
    io[5].desc = desc(DataType::kHALF);
    check(!build->supportsFormatCombination(5, io, 3, 3), tag + "fp16 mass rejected");

    // Workspace grows with the profile's max shapes.
    DynamicPluginTensorDesc shapes[3]{};
    auto setMax = [&](int64_t b, int64_t n, int64_t m) {
        shapes[0].max.nbDims = 4;
        shapes[0].max.d[0] = b;
        shapes[0].max.d[1] = 8;
        shapes[0].max.d[2] = n;
        shapes[0].max.d[3] = 64;
        shapes[2].max.nbDims = 2;
        shapes[2].max.d[0] = b;
        shapes[2].max.d[1] = m;
    };
    setMax(1, 1024, 128);
    size_t const small = build->getWorkspaceSize(shapes, 3, nullptr, 3);
    setMax(4, 32768, 128);
    size_t const large = build->getWorkspaceSize(shapes, 3, nullptr, 3);
    check(small > 0 && large > small && large >= size_t{4} * 32768 * 16, tag + "workspace sized from max shapes");

    // Static-dim checks in configurePlugin.
    DynamicPluginTensorDesc cfg[3]{};
    cfg[0].desc.dims.nbDims = 4;
    cfg[0].desc.dims.d[0] = -1;
    cfg[0].desc.dims.d[1] = 8;
    cfg[0].desc.dims.d[2] = -1;
    cfg[0].desc.dims.d[3] = 64;
    cfg[1].desc.dims = cfg[0].desc.dims;
    cfg[1].desc.dims.d[1] = 2;
    cfg[2].desc.dims.nbDims = 2;
    cfg[2].desc.dims.d[0] = -1;
    cfg[2].desc.dims.d[1] = -1;
    check(build->configurePlugin(cfg, 3, nullptr, 3) == 0, tag + "configurePlugin accepts matching dims");
    cfg[0].desc.dims.d[1] = 9;
    check(build->configurePlugin(cfg, 3, nullptr, 3) != 0, tag + "configurePlugin rejects H != num_heads");

    // Serialise, rebuild at runtime, compare.
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    IPluginV3* copy = plugin->clone();
    delete plugin; // the clone must not point into the original
    auto* copyRuntime = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serial = copyRuntime->getFieldsToSerialize();
    check(serial->nbFields == 5 && fieldValue(serial, "tau") == 0.9f && fieldValue(serial, "scaling") == 0.125
            && fieldValue(serial, "num_heads") == 8 && fieldValue(serial, "num_kv_heads") == 2
            && fieldValue(serial, "head_dim") == 64,
        tag + "serialised fields");
    IPluginV3* restored = creator->createPlugin("node", serial, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, tag + "createPlugin(kRUNTIME) from serialised fields");
    if (restored)
    {
        auto* rr = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(fieldValue(rr->getFieldsToSerialize(), "tau") == 0.9f, tag + "round trip keeps tau");
        IPluginV3* attached = rr->attachToContext(nullptr);
        check(attached != nullptr && attached != restored, tag + "attachToContext returns a clone");
        delete attached;
        delete restored;
    }
    (void) runtime;
    delete copy;
}

void checkSparseAttention(IPluginCreatorV3One* creator)
{
    std::string const tag = "ZipVLSparseAttention: ";
    PluginFieldCollection const* names = creator->getFieldNames();
    std::vector<std::string> got;
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        got.emplace_back(names->fields[i].name);
    }
    check(got == std::vector<std::string>{"scaling", "num_heads", "num_kv_heads", "head_dim"}, tag + "field names");
    for (bool wide : {false, true})
    {
        Fields f = attrs(false, wide);
        IPluginV3* p = creator->createPlugin("node", f.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, tag + "createPlugin with " + (wide ? "64-bit" : "32-bit") + " fields");
        delete p;
    }
    Fields f = attrs(false, false);
    IPluginV3* plugin = creator->createPlugin("node", f.get(), TensorRTPhase::kBUILD);
    if (plugin == nullptr)
    {
        check(false, tag + "no plugin to inspect");
        return;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    check(build->getNbOutputs() == 3, tag + "3 outputs");
    DataType in[5] = {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kINT32, DataType::kINT32};
    DataType out[3] = {};
    check(build->getOutputDataTypes(out, 3, in, 5) == 0 && out[0] == DataType::kBF16 && out[1] == DataType::kBF16
            && out[2] == DataType::kBF16,
        tag + "outputs take query's type");
    DynamicPluginTensorDesc io[8]{};
    io[0].desc = desc(DataType::kHALF);
    for (int32_t pos : {1, 2, 5, 6, 7})
    {
        io[pos].desc = desc(DataType::kHALF);
        check(build->supportsFormatCombination(pos, io, 5, 3), tag + "fp16 at pos " + std::to_string(pos));
        io[pos].desc = desc(DataType::kFLOAT);
        check(!build->supportsFormatCombination(pos, io, 5, 3), tag + "mixed type rejected at " + std::to_string(pos));
    }
    for (int32_t pos : {3, 4})
    {
        io[pos].desc = desc(DataType::kINT32);
        check(build->supportsFormatCombination(pos, io, 5, 3), tag + "int32 at pos " + std::to_string(pos));
    }
    check(build->getWorkspaceSize(io, 5, nullptr, 3) == 0, tag + "no workspace");
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serial = runtime->getFieldsToSerialize();
    IPluginV3* restored = creator->createPlugin("node", serial, TensorRTPhase::kRUNTIME);
    check(restored != nullptr && serial->nbFields == 4 && fieldValue(serial, "num_kv_heads") == 2,
        tag + "serialise round trip");
    delete restored;
    delete plugin;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libzipvl_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr, "getCreators exported");
    check(dlsym(lib, "setLoggerFinder") != nullptr, "setLoggerFinder exported");
    check(dlsym(lib, "zipvl_plugin_info") != nullptr, "zipvl_plugin_info exported");
    if (getCreators)
    {
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators(n);
        check(n == 2, "two creators");
        for (int32_t i = 0; i < n; ++i)
        {
            InterfaceInfo const info = creators[i]->getInterfaceInfo();
            check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "creator is IPluginCreatorV3One");
            auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
            check(std::strcmp(creator->getPluginVersion(), "1") == 0, "creator version 1");
            check(std::strcmp(creator->getPluginNamespace(), "zipvl") == 0, "creator namespace zipvl");
            if (std::strcmp(creator->getPluginName(), "ZipVLTokenSelect") == 0)
            {
                checkTokenSelect(creator);
            }
            else if (std::strcmp(creator->getPluginName(), "ZipVLSparseAttention") == 0)
            {
                checkSparseAttention(creator);
            }
            else
            {
                check(false, std::string("unexpected creator ") + creator->getPluginName());
            }
        }
    }
    std::printf("checks=%d failures=%d\n", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}
