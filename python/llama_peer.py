"""llama.cpp (llama-cpp-python, built by `make llama-cpp`) as the peer that tests and
benchmarks run, loaded so that it runs on every CPU we have.

On CPUs with AMX-INT8 (Sapphire Rapids and later), ggml keeps Q4_0, Q4_1 and Q8_0 weights
in its AMX buffer type, and its AMX matmul segfaults on SmolLM2's Q8_0 file (seen with
llama-cpp-python 0.3.36 on the CI machine; llama.cpp#20824, open: "segfault in
ggml_backend_amx_mul_mat"). There the extra buffer types (AMX, and the CPU repack with
it) are turned off, so ggml's plain CPU kernels run, as on a CPU without AMX; elsewhere
llama.cpp loads as it always does. `AMX_OFF` says which happened.
"""

import llama_cpp
import llama_cpp.llama_cpp as low_level


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


AMX_OFF = _cpu_has_amx()


def load(path: str, **kwargs) -> "llama_cpp.Llama":
    """`llama_cpp.Llama(model_path=path, **kwargs)`, without ggml's AMX buffers on CPUs with AMX."""
    if not AMX_OFF:
        return llama_cpp.Llama(model_path=path, **kwargs)
    defaults = low_level.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=path, **kwargs)
    finally:
        low_level.llama_model_default_params = defaults
