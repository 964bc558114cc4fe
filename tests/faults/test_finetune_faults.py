"""Hostile input to fine-tuning through a real kernel: `%lora` settings, conversations
in files that lie or overflow, peft adapter directories crafted to break the reader,
and an interrupt while adapters train. Each is a clean error that names the problem,
and the training state (step, optimiser steps, a checksum of every weight) is as it
was."""

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from cells import execute
from hostile import TIMEOUT, interrupted, lab, refused, result, start, state  # noqa: F401 (lab is a fixture)

FIXTURES = os.environ.get("TCHLAB_FIXTURES", "")


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%lora r=0", "UsageError", ["r must be a whole number in 1..="]),
        ("%lora r=-8", "UsageError", ["r must be"]),
        ("%lora r=99999999999999999999999", "UsageError", ["r= expects a whole number"]),
        ("%lora r=1000000", "UsageError", ["r must be"]),
        ("%lora alpha=-16", "UsageError", ["alpha must be a finite number above 0"]),
        ("%lora alpha=nan", "UsageError", ["alpha must be"]),
        ("%lora alpha=inf", "UsageError", ["alpha must be"]),
        ("%lora alpha=0", "UsageError", ["alpha must be"]),
        ("%lora dropout=1", "UsageError", ["dropout must be in [0, 1)"]),
        ("%lora dropout=-0.5", "UsageError", ["dropout must be"]),
        ("%lora dropout=nan", "UsageError", ["dropout must be"]),
        ("%lora targets=q_proj,v_proj", "UsageError", ["matches no linear layer", "c_attn"]),
        ("%lora targets=nothing.*", "UsageError", ["matches no linear layer"]),
        ("%lora targets=(a+)+$", "UsageError", ["matches no linear layer"]),
        ("%lora targets=" + "(" * 100 + "a" + ")" * 100, "UsageError", ["regular expression"]),
        ("%lora targets=" + "a{1000}" * 1000, "UsageError", ["regular expression"]),
        ("%lora targets=,", "UsageError", ["names no layer"]),
        ("%lora rank=8", "UsageError", ["%lora takes r, alpha, dropout, targets", "`rank` is not one"]),
        ("%lora merge", "UsageError", ["no LoRA adapters to merge"]),
        ("%lora drop", "UsageError", ["no LoRA adapters to drop"]),
        ("%lora on", "UsageError", ["no LoRA adapters to switch"]),
        ("%lora drop r=4", "UsageError", ["takes no settings"]),
        ("%lora sideways", "UsageError", ["must be one of on, off, merge, drop"]),
        ("%save /tmp/tchlab-no-adapter --adapter", "UsageError", ["no LoRA adapters to save"]),
    ],
)
def test_hostile_lora_settings_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


def test_lora_with_no_model_and_a_second_lora_say_what_to_do(lab):
    km, kc = start()
    try:
        reply, _ = execute(kc, "%lora r=8")
        assert reply["content"]["ename"] == "UsageError" and "no model" in reply["content"]["evalue"], reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    _, kc = lab
    reply, _ = execute(kc, "%lora r=2 targets=c_attn")
    assert reply["content"]["status"] == "ok", reply["content"]
    try:
        refused(kc, "%lora r=4", "UsageError", "adapters already", "%lora merge", "%lora drop")
    finally:
        execute(kc, "%lora drop")


@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_an_interrupt_while_adapters_train_keeps_the_last_whole_step(lab, checkpointing):
    km, kc = lab
    reply, _ = execute(kc, f"%lora r=2 targets=c_attn\n%set checkpointing={checkpointing}")
    assert reply["content"]["status"] == "ok", reply["content"]
    try:
        content, took = interrupted(km, kc, "%train 1000000", wait=1.0)
        assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
        assert took < 1.0
        step = state(kc)[0]
        _, outputs = execute(kc, "%history --last 1")
        assert result(outputs)[-1]["step"] == step, "the state is the last whole step's"
        reply, _ = execute(kc, "%step")
        assert reply["content"]["status"] == "ok"
    finally:
        execute(kc, "%lora drop\n%set checkpointing=false")


def jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    return path


CHAT_FILES = [
    ("missing-role", [{"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}], ["line 1", "has no role"]),
    ("non-string-content", [{"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]}], ["content that is not a string"]),
    ("number-content", [{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}], ["content that is not a string"]),
    ("unknown-role", [{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}], ["the role \"wizard\"", "system, user and assistant"]),
    ("empty", [{"messages": []}], ["empty conversation"]),
    ("huge", [{"messages": [{"role": "user", "content": "x"}] * 100_000}], ["100000 messages", "up to 1024"]),
    ("not-json", ["this is not JSON", "{}"], ["line 1", "not a JSON object"]),
    ("array-line", ['["messages"]'], ["each line is an object"]),
    ("other-keys", [{"text": "hello"}], ["no `messages`", "text"]),
    ("half-pair", [{"prompt": "hi"}], ["`prompt` without a `completion`"]),
    ("mixed-pair", [{"prompt": "hi", "completion": [{"role": "assistant", "content": "x"}]}], ["must both be strings, or both lists of messages"]),
    ("no-assistant", [{"messages": [{"role": "user", "content": "hi"}]}], ["no assistant message", "--all-tokens"]),
    ("blank", ["", "  "], ["no examples"]),
]


@pytest.mark.parametrize("name, lines, contains", CHAT_FILES, ids=[c[0] for c in CHAT_FILES])
def test_hostile_conversation_files_are_refused_naming_file_and_line(lab, tmp_path, name, lines, contains):
    _, kc = lab
    path = jsonl(tmp_path / f"{name}.jsonl", lines)
    refused(kc, f"%data chat {path}", "FileError", str(path), *contains)


def test_chat_files_that_are_not_files_are_refused_without_hanging(lab, tmp_path):
    _, kc = lab
    os.mkfifo(tmp_path / "fifo.jsonl")
    refused(kc, f"%data chat {tmp_path / 'fifo.jsonl'}", "FileError", "FIFO")
    refused(kc, f"%data chat {tmp_path}", "FileError", "directory")
    refused(kc, f"%data chat {tmp_path / 'missing.jsonl'}", "FileError", "missing.jsonl")


@pytest.fixture(scope="module")
def templated(tmp_path_factory):
    """A kernel with a tiny Llama whose chat template raises, or loops."""
    km, kc = start()
    root = tmp_path_factory.mktemp("templates")
    models = {}
    for name, template in [("raise", "{{ raise_exception('only user turns, please') }}"), ("loop", "{% for i in range(100000000) %}{% for j in range(100000000) %}x{% endfor %}{% endfor %}")]:
        model = root / name
        shutil.copytree(os.path.join(FIXTURES, "llama-tied"), model)
        (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
        models[name] = model
    (root / "chars.txt").write_text("abcdefghij hello")
    yield km, kc, models, root
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.mark.parametrize("name, contains", [("raise", "only user turns, please"), ("loop", "chat template")])
def test_a_template_that_raises_or_loops_is_an_error_naming_the_line(templated, name, contains):
    _, kc, models, root = templated
    reply, _ = execute(kc, f"%device cpu\n%load {models[name]}\n%tokenizer char {root / 'chars.txt'}", timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    path = jsonl(root / f"{name}.jsonl", [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}])
    refused(kc, f"%data chat {path}", "FileError", "line 1", contains, timeout=60)


# ---- peft adapter directories ----

def adapter(tmp_path, name, config=None, tensors=None, raw=None):
    """A copy of the LoRA fixture adapter of lora-gpt (made by peft), changed."""
    d = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, "lora-gpt", "adapter"), d)
    if config is not None:
        base = json.loads((d / "adapter_config.json").read_text())
        base.update(config)
        (d / "adapter_config.json").write_text(json.dumps(base))
    if tensors is not None:
        save_file(tensors, d / "adapter_model.safetensors")
    if raw is not None:
        (d / "adapter_model.safetensors").write_bytes(raw)
    return d


A = "base_model.model.transformer.h.0.attn.c_attn.lora_{}.weight"


@pytest.fixture(scope="module")
def base():
    """A kernel holding the base the adapters were made for."""
    km, kc = start()
    reply, _ = execute(kc, f"%device cpu\n%load {os.path.join(FIXTURES, 'lora-gpt', 'base')}", timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def lying_header():
    header = json.dumps({A.format("A"): {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 1 << 40]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 64


ADAPTERS = [
    ("huge-r", {"r": 1_000_000_000}, None, None, ["r is 1000000000"]),
    ("ia3", {"peft_type": "IA3"}, None, None, ["\"IA3\"", "LoRA adapters"]),
    ("prompt-tuning", {"peft_type": "PROMPT_TUNING"}, None, None, ["LoRA adapters"]),
    ("no-type", {"peft_type": None}, None, None, ["no peft_type"]),
    ("dora", {"use_dora": True}, None, None, ["DoRA"]),
    ("bias", {"bias": "all"}, None, None, ["biases"]),
    ("backtracking-regex", {"target_modules": "(a|a)*(a|a)*(a|a)*(a|a)*b" + ".*" * 50}, None, None, ["matches no linear layer"]),
    ("bad-regex", {"target_modules": "(((unclosed"}, None, None, ["regular expression"]),
    ("wrong-shapes", None, {A.format("A"): torch.zeros(4, 7), A.format("B"): torch.zeros(96, 4)}, None, ["lora_A [4, 7]", "needs [4, 32]"]),
    ("missing-half", None, {A.format("A"): torch.zeros(4, 32)}, None, ["has lora_A but no lora_B"]),
    ("stranger-key", None, {"base_model.model.transformer.wte.weight": torch.zeros(4, 4)}, None, ["not a LoRA weight"]),
    ("lying-header", None, None, lying_header(), ["safetensors"]),
    ("truncated", None, None, b"\x10\x00\x00", ["safetensors"]),
]


@pytest.mark.parametrize("name, config, tensors, raw, contains", ADAPTERS, ids=[a[0] for a in ADAPTERS])
def test_hostile_adapter_directories_are_refused_by_name_and_change_nothing(base, tmp_path, name, config, tensors, raw, contains):
    _, kc = base
    d = adapter(tmp_path, name, config, tensors, raw)
    refused(kc, f"%load {d}", "FileError" if name not in ("backtracking-regex", "bad-regex", "wrong-shapes") else "UsageError", *contains)
    _, outputs = execute(kc, "%lora")
    assert result(outputs)["layers"] == [], "no adapter was left behind"


def test_an_adapter_for_another_model_is_refused(lab, tmp_path):
    _, kc = lab
    d = adapter(tmp_path, "other-base")
    refused(kc, f"%load {d}", "UsageError", "transformer.h.1.attn.c_attn", "adapter of another base")


def test_the_real_adapter_loads_onto_its_base(base, tmp_path):
    _, kc = base
    reply, outputs = execute(kc, f"%load {adapter(tmp_path, 'fine')}")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert result(outputs)["loaded"] == 16, "A and B of c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj in two blocks"
    execute(kc, "%lora drop")


# ---- quantisation ----

@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%quantize int5", "UsageError", ["must be one of int8, int4, fp16, none"]),
        ("%quantize int4 --group 0", "UsageError", ["--group must be 32, 64 or 128"]),
        ("%quantize int4 --group 48", "UsageError", ["--group must be 32, 64 or 128"]),
        ("%quantize int4 --group -32", "UsageError", ["--group must be 32, 64 or 128"]),
        ("%quantize int4 --group 99999999999999999999", "UsageError", ["--group expects"]),
        ("%quantize int8 --group 32", "UsageError", ["--group is for int4"]),
        ("%quantize int4 --group 64", "UsageError", ["has 32 inputs, which --group 64 does not divide", "--skip"]),
        ("%quantize int8 --skip nothing_here", "UsageError", ["--skip nothing_here matches no linear layer", "c_attn"]),
        ("%quantize int8 --skip (((", "UsageError", ["regular expression"]),
        ("%quantize none", "UsageError", ["not quantised", "nothing for `%quantize none` to give back"]),
        ("%quantize none --skip c_fc", "UsageError", ["takes no --group or --skip"]),
    ],
)
def test_hostile_quantize_options_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


def test_a_quantised_model_refuses_to_train_and_a_panic_while_quantising_changes_nothing(lab):
    _, kc = lab
    _, outputs = execute(kc, '%generate "1234=" --max-tokens 4')
    float_text = result(outputs)["text"]
    assert execute(kc, "%__fault arm quantize")[0]["content"]["status"] == "ok"
    refused(kc, "%quantize int8", "InternalError", "fault injected")
    refused(kc, "%quantize none", "UsageError", "not quantised")
    reply, _ = execute(kc, "%quantize int8")
    assert reply["content"]["status"] == "ok", reply["content"]
    try:
        refused(kc, "%step", "UsageError", "int8 weights, which do not train", "%quantize none", "QLoRA")
        refused(kc, "%quantize int4 --group 64", "UsageError", "does not divide")
    finally:
        reply, _ = execute(kc, "%quantize none")
        assert reply["content"]["status"] == "ok", reply["content"]
    _, outputs = execute(kc, '%generate "1234=" --max-tokens 4')
    assert result(outputs)["text"] == float_text, "back in float, the model answers as before"


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%prune", "UsageError", ["give --sparsity S", "--pattern 2:4"]),
        ("%prune --sparsity 1.0", "UsageError", ["--sparsity must be above 0 and below 1, got 1"]),
        ("%prune --sparsity 0", "UsageError", ["--sparsity must be above 0 and below 1"]),
        ("%prune --sparsity -0.5", "UsageError", ["--sparsity must be above 0 and below 1"]),
        ("%prune --sparsity nan", "UsageError", ["--sparsity must be above 0 and below 1"]),
        ("%prune --sparsity inf", "UsageError", ["--sparsity must be above 0 and below 1"]),
        ("%prune --sparsity half", "UsageError", ["--sparsity expects"]),
        ("%prune --sparsity 0.5 --method random", "UsageError", ["--method is magnitude or wanda, got `random`"]),
        ("%prune --pattern 2-4", "UsageError", ["--pattern is N:M, such as 2:4, got `2-4`"]),
        ("%prune --pattern 4:4", "UsageError", ["0 < N < M ≤ 64, got 4:4"]),
        ("%prune --pattern 0:4", "UsageError", ["0 < N < M ≤ 64"]),
        ("%prune --pattern -2:4", "UsageError", ["0 < N < M ≤ 64"]),
        ("%prune --pattern 2:99999999999999999999", "UsageError", ["--pattern is N:M"]),
        ("%prune --pattern 64:128", "UsageError", ["0 < N < M ≤ 64"]),
        ("%prune --pattern 2:7", "UsageError", ["has 32 inputs, which do not split into groups of 7"]),
        ("%prune --pattern 2:4 --sparsity 0.3", "UsageError", ["--pattern 2:4 zeroes 0.5 of the weights; --sparsity 0.3 says otherwise"]),
        ("%prune --sparsity 0.5 --method wanda --calib 0", "UsageError", ["--calib must be between 1 and 1024"]),
        ("%prune --sparsity 0.5 --method wanda --calib 5000", "UsageError", ["--calib must be between 1 and 1024"]),
        ("%prune --sparsity 0.5 --calib 4", "UsageError", ["--calib is for --method wanda"]),
    ],
)
def test_hostile_prune_options_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


def test_prune_without_data_for_wanda_on_a_quantised_model_and_a_panic_change_nothing(lab):
    km, kc = start()
    try:
        for code, says in [
            ("%prune --sparsity 0.5", "no model"),
            ("%device cpu\n%model gpt --layers 1 --heads 2 --dim 32 --vocab 16", None),
            ("%prune --sparsity 0.5 --method wanda", "load data first (`%data ...`), or use --method magnitude"),
            ("%prune --sparsity 0.5 --eval", "--eval needs data"),
        ]:
            reply, _ = execute(kc, code)
            if says is None:
                assert reply["content"]["status"] == "ok", reply["content"]
            else:
                assert reply["content"]["ename"] == "UsageError" and says in reply["content"]["evalue"], (code, reply["content"])
        _, outputs = execute(kc, "%prune --sparsity 0.5")
        assert result(outputs)["sparsity"] == 0.5, "magnitude needs no data"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    _, kc = lab
    assert execute(kc, "%__fault arm prune")[0]["content"]["status"] == "ok"
    refused(kc, "%prune --sparsity 0.5 --method wanda", "InternalError", "fault injected")
    reply, _ = execute(kc, "%quantize int8")
    assert reply["content"]["status"] == "ok", reply["content"]
    try:
        refused(kc, "%prune --sparsity 0.5", "UsageError", "quantised weights", "%quantize none")
    finally:
        reply, _ = execute(kc, "%quantize none")
        assert reply["content"]["status"] == "ok", reply["content"]


def test_an_interrupt_while_wanda_calibrates_changes_nothing():
    km, kc = start()
    try:
        reply, _ = execute(kc, "%device cpu\n%seed 0\n%data synth reverse --length 8\n%model gpt --layers 4 --heads 4 --dim 256\n%set batch=64", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        before = state(kc)
        content, took = interrupted(km, kc, "%prune --sparsity 0.5 --method wanda --calib 1024", wait=0.5)
        assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
        assert took < 1.0
        assert state(kc) == before
        _, outputs = execute(kc, "%prune --sparsity 0.5 --method wanda --calib 1")
        assert result(outputs)["sparsity"] == 0.5
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%save /tmp/tchlab-faults-gpt.gguf", "UsageError", ["GGUF files are written for llama, gemma3, phi3 models", "this is a gpt model", "--hf"]),
        ("%save /tmp/tchlab-faults.gguf --type q5_0", "UsageError", ["--type must be one of f32, f16, q8_0, q4_0, q4_1, got `q5_0`"]),
        ("%save /tmp/tchlab-faults.gguf --type ''", "UsageError", ["--type must be one of"]),
        ("%save /tmp/tchlab-faults-dir --type q8_0", "UsageError", ["--type is for GGUF files: name the file FILE.gguf"]),
        ("%save /tmp/tchlab-faults.gguf --hf", "UsageError", ["--hf and --adapter write directories: choose one"]),
        ("%save /tmp/tchlab-faults.gguf --adapter", "UsageError", ["choose one"]),
    ],
)
def test_hostile_gguf_saves_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)
    assert not os.path.exists("/tmp/tchlab-faults.gguf") and not os.path.exists("/tmp/tchlab-faults-gpt.gguf")


def test_gguf_saves_refuse_what_they_cannot_write_and_never_replace_what_is_not_theirs(tmp_path):
    smollm2 = json.load(open(os.path.join(FIXTURES, "smollm2.json")))["file"]
    km, kc = start()
    try:
        def says(code, *contains):
            reply, _ = execute(kc, code, timeout=TIMEOUT)
            content = reply["content"]
            assert content["status"] == "error" and all(c in content["evalue"] for c in contains), (code, content)

        reply, _ = execute(kc, f"%device cpu\n%load {os.path.join(FIXTURES, 'llama-tied')}", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        says(f"%save {tmp_path}/no-tokenizer.gguf", "no tokenizer")
        reply, _ = execute(kc, "%data synth reverse --length 4\n%model llama --layers 1 --heads 2 --dim 32", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        says(f"%save {tmp_path}/char.gguf", "the tokenizer is character-level", "byte-level BPE")
        reply, _ = execute(kc, f"%load {smollm2}", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        notes = tmp_path / "notes.gguf"
        notes.write_text("not a model")
        says(f"%save {notes}", "is not a GGUF file tchlab wrote", "nothing was written")
        assert notes.read_text() == "not a model"
        theirs = tmp_path / "theirs.gguf"
        shutil.copy(os.path.join(FIXTURES, "quants.gguf"), theirs)
        before = theirs.read_bytes()
        says(f"%save {theirs} --type q8_0", "is not a GGUF file tchlab wrote")
        assert theirs.read_bytes() == before
        (tmp_path / "dir.gguf").mkdir()
        says(f"%save {tmp_path}/dir.gguf", "is a directory")
        reply, _ = execute(kc, "%lora r=2", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        says(f"%save {tmp_path}/adapted.gguf", "LoRA adapters", "%lora merge")
        reply, _ = execute(kc, "%lora drop", timeout=TIMEOUT)

        # A panic and an interrupt while saving leave no file, not even a temporary one.
        assert execute(kc, "%__fault arm save-gguf")[0]["content"]["status"] == "ok"
        says(f"%save {tmp_path}/panic.gguf", "fault injected")
        content, took = interrupted(km, kc, f"%save {tmp_path}/interrupted.gguf --type f32", wait=0.3)
        assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
        assert took < 2.0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.gguf", "notes.gguf", "theirs.gguf"]
        reply, _ = execute(kc, f"%save {tmp_path}/whole.gguf --type q4_0", timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ('%generate "12" --beams 0', "UsageError", ["--beams must be at least 1", "got 0"]),
        ('%generate "12" --beams 65', "UsageError", ["--beams must be between 2 and 64, got 65"]),
        ('%generate "12" --beams 65', "UsageError", ["--beams must be between 2 and 64"]),
        ('%generate "12" --beams -2', "UsageError", ["--beams expects"]),
        ('%generate "12" --beams 99999999999999999999', "UsageError", ["--beams expects"]),
        ('%generate "12" --beams 40', "UsageError", ["more than the vocabulary's"]),
        ('%generate "12" --beams 4 --temperature 0.7', "UsageError", ["beam search does not sample: --temperature"]),
        ('%generate "12" --beams 4 --seed 3', "UsageError", ["beam search does not sample: --seed"]),
        ('%generate "12" --length-penalty 2', "UsageError", ["--length-penalty is for beam search: add --beams N"]),
        ('%generate "12" --early-stopping true', "UsageError", ["--early-stopping is for beam search"]),
        ('%generate "12" --beams 4 --length-penalty nan', "UsageError", ["--length-penalty must be a finite number"]),
        ('%generate "12" --beams 4 --length-penalty inf', "UsageError", ["--length-penalty must be a finite number"]),
        ('%generate "12" --beams 4 --early-stopping sometimes', "UsageError", ["--early-stopping is false, true or never, got `sometimes`"]),
        ('%generate "12" --beams 4 --no-repeat-ngram -1', "UsageError", ["--no-repeat-ngram expects"]),
        ('%generate "12" --beams 4 --max-tokens 100000', "UsageError", ["positions", "beam search does not slide its context"]),
    ],
)
def test_hostile_beam_search_options_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


def test_beam_search_in_a_kernel_returns_its_hypotheses_best_first(lab):
    _, kc = lab
    reply, outputs = execute(kc, '%generate "12" --beams 3 --max-tokens 5 --no-repeat-ngram 2')
    assert reply["content"]["status"] == "ok", reply["content"]
    found = result(outputs)
    scores = [h["score"] for h in found["beams"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True), found
    assert found["generated_ids"] == found["beams"][0]["ids"] and found["text"] == found["beams"][0]["text"]
