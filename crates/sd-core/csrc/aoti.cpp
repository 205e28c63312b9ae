// Packages compiled ahead of time by torch's compiler (AOTInductor's `.pt2`,
// `torch._inductor.aoti_compile_and_package`), loaded and run through
// libtorch's own loader: the fused kernels of `torch.compile`, without Python.
#include <ATen/Version.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>
#include <torch/version.h>

#include <cstring>
#include <exception>
#include <string>

namespace {
// (libtorch's own errors without the C++ stack they carry)
char* copy_message(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return strdup(c10_error->what_without_backtrace());
  return strdup(e.what());
}

// A package opened by libtorch's loader, or a CPU package's compiled code
// opened directly (see sd_aoti_load_cpu_so).
struct Handle {
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  std::unique_ptr<torch::inductor::AOTIModelContainerRunner> runner;

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    return loader ? loader->run(inputs) : runner->run(inputs);
  }
};

// "key=value" lines (keys and values carry no newlines in what we write).
char* lines(const std::unordered_map<std::string, std::string>& map) {
  std::string out;
  for (const auto& [key, value] : map) out += key + "=" + value + "\n";
  return strdup(out.c_str());
}
}  // namespace

extern "C" {

// The linked libtorch's version and the CPU kernels' instruction set as ATen
// picks them ("AVX512", "AVX2", "DEFAULT"): what a package is compiled for.
char* sd_aoti_torch_version() { return strdup(TORCH_VERSION); }
char* sd_aoti_cpu_capability() { return strdup(at::get_cpu_capability().c_str()); }

void* sd_aoti_load(const char* path, int device_index, char** error) {
  try {
    auto handle = std::make_unique<Handle>();
    handle->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", false, 1, static_cast<c10::DeviceIndex>(device_index));
    return handle.release();
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

// A CPU package's `.wrapper.so`, already taken out of the package: what the
// loader does after its extraction, which for a package of gigabytes takes
// several times as long as the rest (it writes the archive out in small
// pieces to a folder of its own, every load).
void* sd_aoti_load_cpu_so(const char* so_path, char** error) {
  try {
    auto handle = std::make_unique<Handle>();
    handle->runner = std::make_unique<torch::inductor::AOTIModelContainerRunnerCpu>(so_path, 1, false);
    return handle.release();
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

void sd_aoti_free(void* handle) { delete static_cast<Handle*>(handle); }

// The package's metadata (what the compiler and its caller wrote), read
// without loading the compiled code.
char* sd_aoti_metadata(const char* path, char** error) {
  try {
    return lines(torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model"));
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

// Runs the package on `inputs` (tch tensors); writes new tensors' pointers
// to `outputs` (at most `capacity`) and returns their count, or -1.
int64_t sd_aoti_run(void* loader, void* const* inputs, size_t count, void** outputs, size_t capacity,
                    char** error) {
  try {
    std::vector<at::Tensor> in;
    in.reserve(count);
    for (size_t i = 0; i < count; ++i) in.push_back(*static_cast<at::Tensor*>(inputs[i]));
    auto out = static_cast<Handle*>(loader)->run(in);
    if (out.size() > capacity) {
      *error = strdup(("the package gives " + std::to_string(out.size()) + " outputs, room for " +
                       std::to_string(capacity))
                          .c_str());
      return -1;
    }
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = new at::Tensor(std::move(out[i]));
    return static_cast<int64_t>(out.size());
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return -1;
  }
}

}  // extern "C"
