// fbgemm's float16 GEMM for tchlab's quantised linear layer (models/quantize.rs): the two
// ATen operators tch does not bind (its generator skips every `fbgemm_*` op). In tch a
// tensor handle is a `torch::Tensor*`; each function returns a new one, or null with the
// error kept for `tchlab_shim_error`.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <exception>
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
