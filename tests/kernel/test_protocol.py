"""The whole protocol, checked by jupyter_kernel_test: every message is validated
against the Jupyter message schema by a real jupyter_client."""

import jupyter_kernel_test


class TchlabKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = "tchlab"
    language_name = "rust"
    file_extension = ".rs"

    code_hello_world = "%echo hello, world"
    code_stderr = "%echo --stderr careful"
    completion_samples = [
        {"text": "%tr", "matches": {"%train"}},
        {"text": "%set war", "matches": {"warmup="}},
    ]
    complete_code_samples = ["%step 1", "%echo done", "fn main() {}"]
    incomplete_code_samples = ["fn main() {", "let v = vec![1,"]
    invalid_code_samples = ['%echo "unclosed', "fn main() }"]
    code_page_something = "%help?"
    code_generate_error = "%bogus"
    code_execute_result = [{"code": "%threads 1", "result": "threads: 1"}]
    code_display_data = [{"code": "%help", "mime": "text/html"}]
    code_history_pattern = "%threads*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "%train"
    code_clear_output = "%clear"
