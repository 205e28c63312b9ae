// A CPU random generator object of libtorch's own, so that each run draws
// from its own stream exactly as `torch.Generator("cpu").manual_seed(s)` does
// in diffusers (tch only exposes the process-wide generator).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <exception>

namespace {
char* copy_message(const std::exception& e) { return strdup(e.what()); }
}  // namespace

extern "C" {

void* sd_cpu_generator_new(uint64_t seed, char** error) {
  try {
    return new at::Generator(at::make_generator<at::CPUGeneratorImpl>(seed));
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

void sd_cpu_generator_free(void* generator) { delete static_cast<at::Generator*>(generator); }

// randn of the given shape on the CPU, drawn in `dtype` (an at::ScalarType
// code): torch draws half-precision noise through another transform than
// f32, so an f16 draw is not an f32 draw cast. A new at::Tensor* (tch's C_tensor).
void* sd_cpu_generator_randn(void* generator, const int64_t* dims, size_t ndims, int dtype, char** error) {
  try {
    auto& gen = *static_cast<at::Generator*>(generator);
    auto options = at::TensorOptions().dtype(static_cast<at::ScalarType>(dtype));
    at::Tensor out = at::randn(at::IntArrayRef(dims, ndims), gen, options);
    return new at::Tensor(std::move(out));
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

// rand (uniform in [0, 1)) of the given shape, f32 on the CPU.
void* sd_cpu_generator_rand(void* generator, const int64_t* dims, size_t ndims, char** error) {
  try {
    auto& gen = *static_cast<at::Generator*>(generator);
    at::Tensor out = at::rand(at::IntArrayRef(dims, ndims), gen, at::TensorOptions().dtype(at::kFloat));
    return new at::Tensor(std::move(out));
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

}  // extern "C"
