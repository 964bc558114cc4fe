// What tchlab needs of libtorch that tch does not bind (shim.rs is the Rust side):
// fbgemm's float16 GEMM for the quantised linear layer (tch's generator skips every
// `fbgemm_*` op), and the default random generators' state, which gradient checkpointing
// saves and restores as torch.utils.checkpoint does. In tch a tensor handle is a
// `torch::Tensor*`; each function returns a new one, or null with the error kept for
// `tchlab_shim_error`.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <exception>
#include <mutex>
#include <string>

namespace {
thread_local std::string last_error;

// The operators warn once that they are deprecated: said in tchlab's documentation,
// not on a user's terminal at every first use.
struct Quiet : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

template <typename F>
at::Tensor* guarded(F f) {
  Quiet quiet;
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  try {
    return new at::Tensor(f());
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}
}  // namespace

extern "C" const char* tchlab_shim_error() { return last_error.c_str(); }

extern "C" at::Tensor* tchlab_fp16_pack(at::Tensor* weight) {
  return guarded([&] { return at::fbgemm_pack_gemm_matrix_fp16(*weight); });
}

extern "C" at::Tensor* tchlab_fp16_linear(at::Tensor* x, at::Tensor* packed) {
  return guarded([&] { return at::fbgemm_linear_fp16_weight_fp32_activation(*x, *packed, std::nullopt); });
}

namespace {
// The default generator of a device: the CPU's for index -1, else CUDA device `index`'s.
at::Generator generator(int index) {
  return index < 0 ? at::globalContext().defaultGenerator(at::Device(at::kCPU))
                   : at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}
}  // namespace

extern "C" at::Tensor* tchlab_rng_state(int index) {
  return guarded([&] {
    auto gen = generator(index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  });
}

extern "C" at::Tensor* tchlab_set_rng_state(int index, at::Tensor* state) {
  return guarded([&] {
    auto gen = generator(index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
    return at::Tensor();
  });
}
