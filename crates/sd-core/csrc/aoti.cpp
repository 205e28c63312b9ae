// Packages compiled ahead of time by torch's compiler (AOTInductor's `.pt2`,
// `torch._inductor.aoti_compile_and_package`), loaded and run through
// libtorch's own loader: the fused kernels of `torch.compile`, without Python.
#include <ATen/Version.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
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
    return new torch::inductor::AOTIModelPackageLoader(path, "model", false, 1,
                                                       static_cast<c10::DeviceIndex>(device_index));
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

void sd_aoti_free(void* loader) { delete static_cast<torch::inductor::AOTIModelPackageLoader*>(loader); }

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
    auto out = static_cast<torch::inductor::AOTIModelPackageLoader*>(loader)->run(in);
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
