"""Rust cells in the kernel, driven by jupyter_client: cells reach the live model
through `tchlab::live`, hand weights back to commands, show rich values and rustc's
errors, and neither a panic nor an interrupted endless loop loses the model.

One kernel serves the module: the first Rust cell builds tch and the tchlab library
into the evcxr work directory under ~/.cache/tchlab/evcxr (minutes, once per
machine); later kernels start Rust in seconds.
"""

import math
import time

import numpy
import pytest
from jupyter_client.manager import start_new_kernel
from safetensors.numpy import load_file

from cells import RESULT, execute

# The first Rust cell on a fresh machine compiles libtorch's C++ shim and the library.
FIRST_CELL_TIMEOUT = 1800
TIMEOUT = 300
SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=16"


@pytest.fixture(scope="module")
def kc():
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60)
    reply, _ = execute(kc, SETUP)
    assert reply["content"]["status"] == "ok"
    reply, outputs = execute(kc, "let started = 1;", timeout=FIRST_CELL_TIMEOUT)
    assert reply["content"]["status"] == "ok", (reply["content"], text(outputs))
    kc.km = km
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def ok(kc, code):
    reply, outputs = execute(kc, code, timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", (code, reply["content"], text(outputs))
    return outputs


def text(outputs, name=None):
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream" and name in (None, m["content"]["name"]))


def result(outputs):
    results = [m["content"]["data"] for m in outputs if m["msg_type"] == "execute_result"]
    assert results, "the cell has a result"
    return results[-1]


def weights(kc, pattern):
    return {row["name"]: row for row in result(ok(kc, f"%weights {pattern}"))[RESULT]}


def test_a_rust_cell_reads_the_weights_that_commands_trained(kc, tmp_path):
    ok(kc, "%train 20")
    norm = weights(kc, "wte")["transformer.wte.weight"]["norm"]
    outputs = ok(kc, 'let wte = live::weight("transformer.wte.weight")?;\nprintln!("{:?}", Vec::<f32>::try_from(wte.flatten(0, -1))?);\nwte.norm().double_value(&[])')
    assert float(result(outputs)["text/plain"]) == pytest.approx(norm, rel=1e-6)
    # Rust prints each f32 in the shortest form that reads back to the same f32.
    from_rust = numpy.array(text(outputs, "stdout").strip().strip("[]").split(","), dtype=numpy.float32)
    ok(kc, f"%save {tmp_path}/model")
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))["transformer.wte.weight"].ravel()
    assert from_rust.shape == saved.shape
    assert (from_rust == saved).all(), "the cell sees exactly the trained values"


def test_a_weight_written_by_a_rust_cell_is_what_eval_uses(kc):
    before = result(ok(kc, "%eval"))[RESULT]["loss"]
    info = result(ok(kc, "let info = live::info()?;\ninfo.config[\"vocab_size\"].as_i64().unwrap()"))
    vocab = int(info["text/plain"])
    # Zero embeddings (tied to the output layer) make every logit 0: the loss is ln(vocab).
    ok(kc, 'let zero = Tensor::zeros(wte.size(), (Kind::Float, Device::Cpu));\nlive::set_weight("transformer.wte.weight", &zero)?;')
    after = result(ok(kc, "%eval"))[RESULT]["loss"]
    assert after != pytest.approx(before)
    assert after == pytest.approx(math.log(vocab), rel=1e-5)
    assert weights(kc, "wte")["transformer.wte.weight"]["norm"] == 0.0
    runs = result(ok(kc, "%runs"))[RESULT]
    assert any("weights=1 tensor set by a Rust cell" in r["changes"] for r in runs)
    # Put the trained values back, through a model copy this time, for the tests after.
    ok(kc, 'live::set_weight("transformer.wte.weight", &wte)?;')
    assert weights(kc, "wte")["transformer.wte.weight"]["norm"] > 0


def test_a_bad_write_names_the_shapes_and_changes_nothing(kc):
    before = weights(kc, "")
    # As in evcxr, `?` ends the cell and prints the error on stderr.
    outputs = ok(kc, 'live::set_weight("transformer.wte.weight", &Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)))?;')
    message = text(outputs, "stderr")
    assert "transformer.wte.weight" in message and "[3, 3]" in message and "[12, 32]" in message, message
    outputs = ok(kc, 'live::set_weight("transformer.wte.wieght", &wte).unwrap_err().to_string()')
    assert "did you mean transformer.wte.weight" in result(outputs)["text/plain"]
    assert weights(kc, "") == before


def test_commands_run_from_rust_show_their_output_and_return_json(kc):
    outputs = ok(kc, 'let metrics = live::run("%eval")?;\nmetrics["loss"].as_f64().unwrap() > 0.0')
    assert result(outputs)["text/plain"] == "true"
    assert any(m["msg_type"] == "execute_result" for m in outputs)


def test_a_rust_cell_reads_the_activations_that_cache_kept(kc):
    kept = result(ok(kc, '%cache "123=" --names "blocks.0.hook_resid_post,blocks.0.attn.hook_pattern"'))[RESULT]
    assert [a["name"] for a in kept["activations"]] == ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"]
    outputs = ok(kc, 'let p = live::activation("blocks.0.attn.hook_pattern")?;\nformat!("{:?} {:.3}", p.size(), p.sum(Kind::Float).double_value(&[]))')
    assert result(outputs)["text/plain"] == '"[1, 2, 4, 4] 8.000"', "2 heads × 4 queries, each row summing to one"
    outputs = ok(kc, 'live::activations()?.len()')
    assert result(outputs)["text/plain"] == "2"
    outputs = ok(kc, 'live::activation("blocks.0.hook_resid_pots").unwrap_err().to_string()')
    assert "did you mean blocks.0.hook_resid_post" in result(outputs)["text/plain"]


def test_values_show_rich_and_output_streams_while_the_cell_runs(kc):
    data = result(ok(kc, "live::weight(\"transformer.ln_f.weight\")?"))
    assert "Tensor [32] Float on cpu" in data["text/plain"] and "<pre>" in data["text/html"]
    history = result(ok(kc, "live::history()?"))
    assert "20 steps" in history["text/plain"] and "<table>" in history["text/html"]
    outputs = ok(kc, 'println!("first");\nstd::thread::sleep(std::time::Duration::from_secs(3));\nprintln!("second");')
    streams = [m for m in outputs if m["msg_type"] == "stream"]
    assert [m["content"]["text"] for m in streams] == ["first\n", "second\n"]
    assert streams[1]["arrived"] - streams[0]["arrived"] > 2, "the first line arrived while the cell still ran"


def test_compile_errors_point_at_the_cells_own_lines(kc):
    reply, _ = execute(kc, 'let fine = 1;\nlet wrong: u32 = "text";')
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "CompileError"
    assert "mismatched types" in content["evalue"] and "cell line 2" in content["evalue"], content["evalue"]


def test_evcxr_commands_pass_through(kc):
    outputs = ok(kc, ":vars")
    assert "started" in result(outputs)["text/plain"]


def test_a_panic_keeps_the_kernel_the_model_and_earlier_variables(kc):
    before = weights(kc, "")
    ok(kc, "let kept = 41;")
    reply, outputs = execute(kc, "let empty: Vec<i32> = Vec::new();\nempty[3]")
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "RustPanic"
    assert "index out of bounds" in reply["content"]["evalue"]
    assert "stack backtrace" not in text(outputs)
    assert result(ok(kc, "kept + 1"))["text/plain"] == "42"
    assert weights(kc, "") == before


def test_an_interrupted_endless_loop_keeps_the_kernel_and_the_model(kc):
    before = weights(kc, "")
    msg_id = kc.execute("let mut spins = 0u64;\nloop { spins = spins.wrapping_add(1); std::hint::black_box(spins); }")
    time.sleep(3)
    asked = time.time()
    kc.km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=TIMEOUT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert time.time() - asked < 5
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"
    assert "variables are gone" in content["evalue"] and "kept" in content["evalue"] and "model" in content["evalue"]
    assert weights(kc, "") == before
    assert result(ok(kc, "%step"))[RESULT]["step"] == 21
    assert result(ok(kc, "live::info()?.step"))["text/plain"] == "21", "a fresh Rust process reaches the session"


def test_rust_completion_comes_from_rust_analyzer(kc):
    code = "let text = String::fr"
    kc.complete(code, len(code))
    reply = kc.get_shell_msg(timeout=TIMEOUT)["content"]
    assert reply["status"] == "ok" and any(m.startswith("from") for m in reply["matches"]), reply
    assert code[reply["cursor_start"] : reply["cursor_end"]] == "fr"


def test_a_crashing_cell_process_keeps_the_kernel_and_the_model(kc):
    before = weights(kc, "")
    ok(kc, "let doomed = 1;")
    reply, _ = execute(kc, "std::process::abort();")
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "RustCrash", content
    assert "doomed" in content["evalue"] and "session is intact" in content["evalue"]
    assert weights(kc, "") == before
    assert result(ok(kc, "live::info()?.step"))["text/plain"] == "21", "a fresh Rust process reaches the session"
