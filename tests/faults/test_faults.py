"""Hostile and careless input through a real kernel (jupyter_client): commands,
hyperparameters, files, crafted checkpoints, wire messages and interrupts.

For each case: the reply is a clean error that names the problem (or a correct
result), the next cell works, the training state is unchanged (step, optimiser step
count, a checksum of every weight's bytes) and no user file changed. Checkpoint files
are crafted here with PyTorch and zipfile (the tests run in the project's Python
environment)."""

import io
import json
import os
import pickle
import shutil
import stat
import struct
import time
import zipfile

import pytest
import torch

from cells import execute, send_comm, shell_socket
from hostile import SETUP, TIMEOUT, interrupted, lab, refused, result, rss_mb, start, state  # noqa: F401 (lab is a fixture)

# ---- commands and hyperparameters ----

@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%train --time 99999999999999999999", "UsageError", ["at most a week"]),
        ("%train --time -5s", "UsageError", ["--time"]),
        ("%model bert --classes -1", "UsageError", ["--classes must be at least 2"]),
        ("%model bert --classes 0", "UsageError", ["--classes must be at least 2"]),
        ("%model gpt --vocab 4", "UsageError", ["smaller than the tokenizer"]),
        ("%model gpt --dim 1000000 --layers 1000", "MemoryError", ["needs about", "available"]),
        ("%model gpt --layers 100000", "UsageError", ["n_layer", "4096"]),
        ("%model gpt --dim 100000000", "UsageError", ["n_embd"]),
        ("%model gpt --heads 3 --dim 32", "UsageError", ["multiple"]),
        ("%model gpt --dropout 1.5", "UsageError", ["--dropout"]),
        ("%set batch=1000000000000", "UsageError", ["batch", "at most"]),
        ("%set batch=1000000", "MemoryError", ["training step", "lower `batch`"]),
        ("%set batch=0", "UsageError", ["batch"]),
        ("%set eps=0", "UsageError", ["eps", "> 0"]),
        ("%set lr=nan", "UsageError", ["lr=nan"]),
        ("%set lr=1e999", "UsageError", ["lr"]),
        ("%set accum=100000000", "UsageError", ["accum"]),
        ("%set lr=1e-3 batch=zero", "UsageError", ["batch=zero"]),
        ("%set checkpointing=maybe", "UsageError", ["checkpointing=maybe", "true or false"]),
        ("%sweep lr=log(1e-4,1e-2) --method random --trials 1000000000", "UsageError", ["--trials", "1000"]),
        ("%sweep lr=[1,2,3,4,5,6,7,8,9,10,11] batch=[1,2,3,4,5,6,7,8,9,10,11] warmup=[1,2,3,4,5,6,7,8,9,10]", "UsageError", ["1210 combinations"]),
        ("%sweep lr=log(1e-4,1e-2) --method tpe --trials 1000000000", "UsageError", ["--trials", "1000"]),
        ("%sweep warmup=int(0,99999999999999999999)", "UsageError", ["within"]),
        ("%sweep warmup=int(-9007199254740993,3)", "UsageError", ["within"]),
        ("%sweep lr=uniform(-1e308,1e308) --method tpe", "UsageError", ["two numbers"]),
        ("%sweep lr=log(1e-4,1e-2) --schedule forever", "UsageError", ["none, halving, asha or pbt"]),
        ("%sweep lr=log(1e-4,1e-2) --method bayes", "UsageError", ["grid, random or tpe"]),
        ("%threads 100000", "UsageError", ["threads must be between"]),
        ("%threads 0", "UsageError", ["threads must be between"]),
        ("%timeit --runs 100000000 %echo x", "UsageError", ["--runs"]),
        ("%generate \"12\" --max-tokens 100000000", "UsageError", ["--max-tokens"]),
        ("%generate \"12\" --top-p 0", "UsageError", ["--top-p"]),
        ("%generate \"12\" --top-k -5", "UsageError", ["--top-k"]),
        ("%generate \"12\" --temperature -1", "UsageError", ["--temperature"]),
        ("%generate \"12\" --temperature inf", "UsageError", ["--temperature"]),
        ("%attention \"12\" --layer 99", "UsageError", ["--layer"]),
        ("%attention \"12\" --kind cross", "UsageError", ["--kind cross", "encoder–decoders"]),
        ("%attention \"12\" --kind sideways", "UsageError", ["sideways"]),
        ("%eval --beams 4", "UsageError", ["--beams", "source → target pairs"]),
        ("%generate \"12\" --beams 3 --return 4", "UsageError", ["3 beams", "between 1 and 3"]),
        ("%generate \"12\" --return 2", "UsageError", ["--return", "--beams"]),
        ("%data synth sort --seq2seq", "UsageError", ["encoder–decoder"]),
        ("%rewind nowhere", "UsageError", ["nowhere"]),
        ("%echo \"unclosed", "UsageError", ["unclosed"]),
        ("%", "UsageError", ["lone"]),
        ("%stpe", "UsageError", ["did you mean", "%step"]),
        ("%time %time %step", "UsageError", ["timing a timing command"]),
        ("%fork main", "UsageError", ["exists already"]),
        ("%snapshot 12", "UsageError", ["number"]),
        ("%__fault panic", "InternalError", ["fault injected", "session is intact"]),
    ],
)
def test_hostile_commands_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


def test_a_tiny_temperature_is_greedy_not_a_crash(lab):
    _, kc = lab
    before = state(kc)
    _, greedy = execute(kc, '%generate "123" --max-tokens 5')
    reply, tiny = execute(kc, '%generate "123" --max-tokens 5 --temperature 1e-40')
    assert reply["content"]["status"] == "ok", reply["content"]
    assert result(tiny)["generated_ids"] == result(greedy)["generated_ids"]
    assert state(kc) == before


def test_a_panic_inside_a_training_step_changes_nothing(lab):
    _, kc = lab
    assert execute(kc, "%__fault arm step")[0]["content"]["status"] == "ok"
    refused(kc, "%step", "InternalError", "a training step", "fault injected")
    before = state(kc)
    reply, outputs = execute(kc, "%step")
    assert reply["content"]["status"] == "ok" and result(outputs)["step"] == before[0] + 1, "training goes on"


# ---- files that are not what they seem ----

def test_devices_directories_and_fifos_are_refused_without_hanging(lab, tmp_path):
    _, kc = lab
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(kc, "%data text /dev/zero", "FileError", "/dev/zero", "device")
    refused(kc, f"%data text {tmp_path}", "FileError", "directory")
    refused(kc, f"%data text {fifo}", "FileError", "FIFO")
    refused(kc, "%tokenizer char /dev/urandom", "FileError", "device")
    refused(kc, f"%tokenizer {fifo}", "FileError", "FIFO")
    refused(kc, "%load /dev/null", "FileError", "/dev/null")
    refused(kc, f"%data classify {fifo}", "FileError")


def test_a_save_never_deletes_what_it_did_not_write(lab, tmp_path):
    _, kc = lab
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "keep.txt").write_text("my notes")
    refused(kc, f"%save {precious}", "FileError", "keep.txt", "did not write")
    refused(kc, f"%save {precious} --hf", "FileError", "keep.txt")
    assert sorted(os.listdir(precious)) == ["keep.txt"] and (precious / "keep.txt").read_text() == "my notes"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("text")
    refused(kc, f"%save {a_file}", "FileError", "is a file")
    assert a_file.read_text() == "text"
    # A checkpoint tchlab wrote is replaced, atomically, as before.
    ours = tmp_path / "ckpt"
    assert execute(kc, f"%save {ours}")[0]["content"]["status"] == "ok"
    assert (ours / ".tchlab-checkpoint").is_file()
    assert execute(kc, f"%save {ours}")[0]["content"]["status"] == "ok"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert execute(kc, f"%save {empty}")[0]["content"]["status"] == "ok", "an empty directory is fine"


def test_writefile_keeps_permissions_writes_through_links_and_refuses_devices(lab, tmp_path):
    _, kc = lab
    private = tmp_path / "secret.txt"
    private.write_text("old")
    os.chmod(private, 0o600)
    assert execute(kc, f"%%writefile {private}\nnew text\n")[0]["content"]["status"] == "ok"
    assert private.read_text() == "new text\n" and stat.S_IMODE(os.stat(private).st_mode) == 0o600
    target = tmp_path / "target.txt"
    target.write_text("before")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert execute(kc, f"%%writefile {link}\nthrough the link\n")[0]["content"]["status"] == "ok"
    assert link.is_symlink() and target.read_text() == "through the link\n"
    refused(kc, "%%writefile /dev/null\nx\n", "FileError", "not a regular file")
    refused(kc, f"%%writefile {tmp_path}\nx\n", "FileError", "not a regular file")
    leftovers = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert not leftovers, leftovers


# ---- crafted checkpoints ----

def model_dir(tmp_path, name, weights_name, weights_bytes, config=None):
    d = tmp_path / name
    d.mkdir()
    config = config or {"model_type": "gpt2", "vocab_size": 16, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}
    (d / "config.json").write_text(json.dumps(config))
    (d / weights_name).write_bytes(weights_bytes)
    return d


def torch_zip(entries):
    """A zip laid out as torch.save lays it out, with these entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(f"archive/{name}", data)
    return buf.getvalue()


def saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rewrite(zip_bytes, change):
    """The same zip with `change(name, data) -> data` applied to each entry."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info.filename)))
    return out.getvalue()


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tchlab-pwned",))


def test_hostile_pickles_are_refused_quickly_in_bounded_memory(lab, tmp_path):
    km, kc = lab
    deep = b"\x80\x02" + b"(" * 200_000 + b"l" * 200_000 + b"."
    appended = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    # Memo doubling: d(n+1) = {"a": dn, "b": dn}, 2^60 leaves in a few hundred bytes.
    doubling = b"\x80\x02}(\x8c\x01wK\x00uq\x00" + b"".join(b"}(\x8c\x01ah" + bytes([i]) + b"\x8c\x01bh" + bytes([i]) + b"uq" + bytes([i + 1]) for i in range(60)) + b"."
    # A list memoised and copied into a doubling list, through APPEND on shared values.
    copying = b"\x80\x02]q\x00" + b"".join(b"h\x00h\x00\x86a" for _ in range(200_000)) + b"."
    cases = [
        ("deep", deep, "deep"),
        ("appended", appended, "deep"),
        ("doubling", doubling, "entries"),
        ("exploit", pickle.dumps({"w": Exploit()}, protocol=2), "posix.system"),
        ("copying", copying, "no tensors"),
        ("truncated", pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-5], "ends in the middle"),
    ]
    before_rss = rss_mb(km)
    for name, data, why in cases:
        d = model_dir(tmp_path, name, "pytorch_model.bin", torch_zip({"data.pkl": data}))
        _, took = refused(kc, f"%load {d}", "FileError", why)
        assert took < 10, f"{name}: {took:.1f} s"
    assert not os.path.exists("/tmp/tchlab-pwned"), "nothing in a pickle runs"
    assert rss_mb(km) - before_rss < 500, f"the kernel grew from {before_rss:.0f} MB to {rss_mb(km):.0f} MB"


def test_tensors_that_reach_past_or_repeat_their_storage_are_refused(lab, tmp_path):
    _, kc = lab
    # A view with zero strides: 10^12 elements from a storage of one.
    expanded = saved({"transformer.wte.weight": torch.zeros(1).expand(1_000_000, 1_000_000)})
    d = model_dir(tmp_path, "expanded", "pytorch_model.bin", expanded)
    refused(kc, f"%load {d}", "FileError", "transformer.wte.weight", "materialise")
    # A storage cut short: the tensor reaches past its end.
    short = rewrite(saved({"transformer.wte.weight": torch.ones(16, 8)}), lambda n, b: b[:64] if n.endswith("/data/0") else b)
    d = model_dir(tmp_path, "short", "pytorch_model.bin", short)
    refused(kc, f"%load {d}", "FileError", "reaches element")
    # The zip claims data.pkl is 4 GB.
    lying = bytearray(saved({"w": torch.ones(2)}))
    central = lying.index(b"PK\x01\x02")
    while central >= 0:
        name_len = struct.unpack_from("<H", lying, central + 28)[0]
        if lying[central + 46 : central + 46 + name_len].endswith(b"data.pkl"):
            struct.pack_into("<I", lying, central + 24, 0xFFFFFFF0)
        central = lying.find(b"PK\x01\x02", central + 4)
    d = model_dir(tmp_path, "lying", "pytorch_model.bin", bytes(lying))
    refused(kc, f"%load {d}", "MemoryError", "data.pkl", "claims")


def test_big_endian_state_dicts_are_read_correctly(tmp_path):
    km, kc = start()
    try:
        assert execute(kc, SETUP)[0]["content"]["status"] == "ok"
        hf = tmp_path / "hf"
        assert execute(kc, f"%save {hf} --hf")[0]["content"]["status"] == "ok"
        expected = state(kc)[2]
        from safetensors.torch import load_file

        little = saved(load_file(hf / "model.safetensors"))

        def to_big(name, data):
            if name.endswith("/byteorder"):
                return b"big"
            if "/data/" in name:
                return b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))  # float32 elements
            return data

        big = rewrite(little, to_big)
        assert b"big" in big
        (hf / "model.safetensors").unlink()
        (hf / "pytorch_model.bin").write_bytes(big)
        reply, _ = execute(kc, f"%load {hf}")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert state(kc)[2] == expected, "the big-endian file gives the same weights, bit for bit"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


MISTRAL = {"model_type": "mistral", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 8}


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("window-zero", dict(MISTRAL, sliding_window=0), ["sliding_window", "at least 1"]),
        ("window-negative", dict(MISTRAL, sliding_window=-4), ["sliding_window", "at least 1"]),
        ("window-text", dict(MISTRAL, sliding_window="four"), ["sliding_window"]),
        ("qwen2-windowed", dict(MISTRAL, model_type="qwen2", use_sliding_window=True, sliding_window=4), ["use_sliding_window", "not supported"]),
    ],
)
def test_sliding_windows_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


T5 = {"model_type": "t5", "vocab_size": 16, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 1, "num_heads": 2}


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("t5-activation", dict(T5, feed_forward_proj="gated-gelu-tanh"), ["feed_forward_proj", "gated-ACT"]),
        ("t5-unknown-activation", dict(T5, feed_forward_proj="gated-swoosh"), ["swoosh"]),
        ("t5-buckets", dict(T5, relative_attention_num_buckets=2), ["relative_attention_num_buckets", "at least 4"]),
        ("t5-distance", dict(T5, relative_attention_max_distance=3), ["relative_attention_max_distance"]),
        ("t5-start", dict(T5, decoder_start_token_id=16), ["decoder_start_token_id", "0..15"]),
        ("t5-decoder-layers", dict(T5, num_decoder_layers=-1), ["num_decoder_layers", "positive"]),
        ("t5-d-kv", dict(T5, d_kv="eight"), ["d_kv"]),
    ],
)
def test_t5_configs_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


BART = {"model_type": "bart", "vocab_size": 16, "d_model": 8, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 16, "decoder_ffn_dim": 16, "max_position_embeddings": 8}
MARIAN = dict(BART, model_type="marian", pad_token_id=15, decoder_start_token_id=15, eos_token_id=0, forced_eos_token_id=0)


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("bart-no-heads", dict(BART, encoder_attention_heads=0), ["encoder_attention_heads", "positive"]),
        ("bart-heads", dict(BART, decoder_attention_heads=3), ["decoder_attention_heads", "divisible"]),
        ("bart-dropout", dict(BART, dropout=1.5), ["dropout", "[0, 1)"]),
        ("bart-start", dict(BART, decoder_start_token_id=16), ["decoder_start_token_id", "0..15"]),
        ("bart-forced-bos", dict(BART, forced_bos_token_id=-3), ["forced_bos_token_id", "0..15"]),
        ("bart-activation", dict(BART, activation_function="swoosh"), ["swoosh"]),
        ("bart-positions", dict(BART, max_position_embeddings=0), ["max_position_embeddings", "positive"]),
        ("bart-width", dict(BART, d_model="wide"), ["d_model"]),
        ("marian-two-vocabularies", dict(MARIAN, share_encoder_decoder_embeddings=False, decoder_vocab_size=20), ["separate source and target vocabularies"]),
        # MarianConfig's own padding id (58100) where the file does not give one.
        ("marian-default-pad", dict(BART, model_type="marian"), ["pad_token_id", "58100"]),
    ],
)
def test_bart_and_marian_configs_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


def test_marian_sinusoids_too_large_for_memory_are_refused_before_they_are_computed(lab, tmp_path):
    km, kc = lab
    config = dict(MARIAN, d_model=65536, encoder_attention_heads=16, decoder_attention_heads=16, max_position_embeddings=16_000_000)
    d = model_dir(tmp_path, "marian-positions", "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    before = rss_mb(km)
    refused(kc, f"%load {d}", "MemoryError", "needs about")
    assert rss_mb(km) - before < 200, "refused before allocating"


GENERATION_CONFIGS = [
    ("beams-zero", '{"num_beams": 0}', ["num_beams", "at least 1"]),
    ("penalty-word", '{"length_penalty": "long"}', ["not a generation config", "length_penalty"]),
    ("early-sometimes", '{"early_stopping": "sometimes"}', ["early_stopping", "never"]),
    ("bad-words-empty", '{"bad_words_ids": [[]]}', ["bad_words_ids"]),
    ("bad-words-negative", '{"bad_words_ids": [[-4]]}', ["bad_words_ids"]),
    ("eos-words", '{"eos_token_id": ["two"]}', ["eos_token_id", "list of ids"]),
    ("max-length-negative", '{"max_length": -1}', ["max_length"]),
    ("not-json", "num_beams = 4", ["not a generation config"]),
]


@pytest.mark.parametrize("name, text, contains", GENERATION_CONFIGS, ids=[g[0] for g in GENERATION_CONFIGS])
def test_hostile_generation_configs_are_refused_naming_the_file_and_key(lab, tmp_path, name, text, contains):
    _, kc = lab
    d = tmp_path / name
    shutil.copytree(os.path.join(os.environ["TCHLAB_FIXTURES"], "bart"), d)
    (d / "generation_config.json").write_text(text)
    refused(kc, f"%load {d}", "FileError", "generation_config.json", *contains)


def test_generation_config_ids_outside_the_vocabulary_are_refused_when_generating(tmp_path):
    # A kernel of its own: these files load, and the shared lab's model must stay its own.
    km, kc = start()
    try:
        for key, value in [("forced_bos_token_id", 1000), ("bad_words_ids", [[5, 96]]), ("forced_eos_token_id", [2, 4096])]:
            d = tmp_path / key
            shutil.copytree(os.path.join(os.environ["TCHLAB_FIXTURES"], "bart"), d)
            (d / "generation_config.json").write_text(json.dumps({key: value, "num_beams": 2, "max_length": 6}))
            reply, _ = execute(kc, f"%device cpu\n%load {d}", timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok", reply["content"]
            refused(kc, '%generate "w5 w6"', "UsageError", key, "outside the vocabulary of 96 ids")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


GEMMA3 = {"model_type": "gemma3_text", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 4, "max_position_embeddings": 16, "sliding_window": 4}


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("gemma3-no-heads", dict(GEMMA3, num_attention_heads=0), ["num_attention_heads"]),
        ("gemma3-kv-heads", dict(GEMMA3, num_attention_heads=4, num_key_value_heads=3), ["num_key_value_heads", "multiple"]),
        ("gemma3-window-zero", dict(GEMMA3, sliding_window=0), ["sliding_window", "at least 1"]),
        ("gemma3-window-negative", dict(GEMMA3, sliding_window=-512), ["sliding_window", "at least 1"]),
        ("gemma3-layer-types", dict(GEMMA3, layer_types=["sliding_attention"]), ["layer_types", "1 entries for 2 layers"]),
        ("gemma3-layer-kind", dict(GEMMA3, layer_types=["sliding_attention", "chunked_attention"]), ["chunked_attention"]),
        ("gemma3-pattern", dict(GEMMA3, sliding_window_pattern=0), ["sliding_window_pattern"]),
        ("gemma3-yarn", dict(GEMMA3, rope_scaling={"rope_type": "yarn", "factor": 4.0}), ["yarn", "not supported"]),
        ("gemma3-linear", dict(GEMMA3, rope_scaling={"rope_type": "linear", "factor": -8}), ["factor"]),
        ("gemma3-softcap", dict(GEMMA3, attn_logit_softcapping=50.0), ["attn_logit_softcapping"]),
        ("gemma3-final-softcap", dict(GEMMA3, final_logit_softcapping=0), ["final_logit_softcapping"]),
        ("gemma3-head-dim", dict(GEMMA3, head_dim=5), ["head_dim", "even"]),
        ("gemma3-activation", dict(GEMMA3, hidden_activation="swoosh"), ["swoosh"]),
    ],
)
def test_gemma3_configs_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


NEOX = {"model_type": "gpt_neox", "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 16, "rotary_pct": 0.5}


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("neox-no-heads", dict(NEOX, num_attention_heads=0), ["num_attention_heads"]),
        ("neox-heads", dict(NEOX, num_attention_heads=3), ["hidden_size", "multiple"]),
        ("neox-rotary-zero", dict(NEOX, rotary_pct=0), ["rotary_pct", "(0, 1]"]),
        ("neox-rotary-over", dict(NEOX, rotary_pct=1.5), ["rotary_pct", "(0, 1]"]),
        ("neox-rotary-negative", dict(NEOX, rotary_pct=-0.25), ["rotary_pct"]),
        ("neox-rotary-odd", dict(NEOX, rotary_pct=0.375), ["rotary_pct", "even"]),
        ("neox-base", dict(NEOX, rotary_emb_base=0.5), ["rotary_emb_base"]),
        ("neox-scaling", dict(NEOX, rope_scaling={"type": "dynamic", "factor": 2.0}), ["rope_scaling", "not supported"]),
        ("neox-dropout", dict(NEOX, hidden_dropout=1.0), ["hidden_dropout"]),
    ],
)
def test_gpt_neox_configs_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


PHI3 = {"model_type": "phi3", "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 16}


@pytest.mark.parametrize(
    "name, config, contains",
    [
        ("phi3-longrope", dict(PHI3, rope_scaling={"type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4}), ["longrope", "not supported"]),
        ("phi3-su", dict(PHI3, rope_scaling={"type": "su", "long_factor": [1.0], "short_factor": [1.0]}), ["`su`", "not supported"]),
        ("phi3-partial", dict(PHI3, partial_rotary_factor=0.0), ["partial_rotary_factor", "(0, 1]"]),
        ("phi3-partial-odd", dict(PHI3, partial_rotary_factor=0.375), ["partial_rotary_factor", "even"]),
        ("phi3-window", dict(PHI3, sliding_window=0), ["sliding_window", "at least 1"]),
        ("phi3-kv-heads", dict(PHI3, num_key_value_heads=3), ["num_key_value_heads"]),
    ],
)
def test_phi3_configs_that_cannot_work_are_refused_by_name(lab, tmp_path, name, config, contains):
    _, kc = lab
    d = model_dir(tmp_path, name, "pytorch_model.bin", saved({"w": torch.ones(2)}), config)
    refused(kc, f"%load {d}", "FileError", *contains)


def sentencepiece_gguf(path, tokens=None, scores="default", types="default", bos=1):
    """A GGUF file of a one-block Llama with a SentencePiece vocabulary, written by the gguf package."""
    import gguf
    import numpy as np

    tokens = tokens or ["<unk>", "<s>", "</s>", "\u2581", "a", "\u2581a"]
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [(w.add_context_length, 16), (w.add_embedding_length, 8), (w.add_block_count, 1), (w.add_feed_forward_length, 16),
                       (w.add_head_count, 2), (w.add_head_count_kv, 2), (w.add_layer_norm_rms_eps, 1e-5)]:
        add(value)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores([-float(i) for i in range(len(tokens))] if scores == "default" else scores)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3) if types == "default" else types)
    w.add_bos_token_id(bos)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "name, kwargs, contains",
    [
        ("no-scores", dict(scores=None), ["tokenizer.ggml.scores"]),
        ("few-scores", dict(scores=[0.0, -1.0]), ["6 tokens but 2 scores"]),
        ("many-types", dict(types=[1] * 9), ["6 tokens", "9 token types"]),
        ("text-scores", dict(scores=["a"] * 6), ["tokenizer.ggml.scores"]),
        ("duplicates", dict(tokens=["<unk>", "<s>", "</s>", "a", "b", "a"]), ["\"a\" twice", "ids 3 and 5"]),
        ("bos-past", dict(bos=600), ["bos_token_id", "600", "outside"]),
    ],
)
def test_hostile_sentencepiece_vocabularies_are_refused_by_name(lab, tmp_path, name, kwargs, contains):
    _, kc = lab
    path = sentencepiece_gguf(tmp_path / f"{name}.gguf", **kwargs)
    refused(kc, f"%load {path}", "FileError", f"{name}.gguf", *contains)


def test_bad_configs_and_formats_are_refused_before_anything_is_built(lab, tmp_path):
    km, kc = lab
    tiny = saved({"w": torch.ones(2)})
    huge_layers = model_dir(tmp_path, "layers", "pytorch_model.bin", tiny, {"model_type": "gpt2", "vocab_size": 16, "n_embd": 8, "n_layer": 1_000_000_000, "n_head": 2})
    refused(kc, f"%load {huge_layers}", "FileError", "config.json", "n_layer")
    huge = model_dir(tmp_path, "huge", "pytorch_model.bin", tiny, {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 65536, "n_layer": 4000, "n_head": 16})
    before = rss_mb(km)
    refused(kc, f"%load {huge}", "MemoryError", "needs about")
    assert rss_mb(km) - before < 200, "refused before allocating"
    float_layers = model_dir(tmp_path, "float", "pytorch_model.bin", tiny, {"model_type": "gpt2", "vocab_size": 16, "n_embd": 8, "n_layer": 1e9, "n_head": 2})
    refused(kc, f"%load {float_layers}", "FileError", "config.json")
    eps = model_dir(tmp_path, "eps", "pytorch_model.bin", tiny, {"model_type": "gpt2", "vocab_size": 16, "n_embd": 8, "n_layer": 1, "n_head": 2, "layer_norm_epsilon": -1})
    refused(kc, f"%load {eps}", "FileError", "layer_norm_epsilon")
    bert = {"model_type": "bert", "vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 8}
    scalar_head = saved({"bert.pooler.dense.weight": torch.ones(8, 8), "classifier.weight": torch.tensor(1.0)})
    d = model_dir(tmp_path, "scalar", "pytorch_model.bin", scalar_head, bert)
    refused(kc, f"%load {d}", "FileError", "missing")
    ot = tmp_path / "w.ot"
    ot.write_bytes(b"PK\x03\x04 TorchScript archive")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 16, "n_embd": 8, "n_layer": 1, "n_head": 2}))
    refused(kc, f"%load {ot}", "FileError", ".ot", "safetensors")
    st = model_dir(tmp_path, "truncated-st", "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\":")
    refused(kc, f"%load {st}", "FileError", "safetensors")
    claims = model_dir(tmp_path, "claims-st", "model.safetensors", struct.pack("<Q", 1 << 60) + b"{}")
    refused(kc, f"%load {claims}", "FileError", "safetensors")
    not_json = model_dir(tmp_path, "not-json", "model.safetensors", b"", None)
    (not_json / "config.json").write_text("{not json")
    refused(kc, f"%load {not_json}", "FileError", "not valid JSON")
    bad_tokenizer = tmp_path / "tokenizer.json"
    bad_tokenizer.write_text('{"model": 5}')
    refused(kc, f"%tokenizer {bad_tokenizer}", "FileError", "tokenizer.json")


# ---- model families, GGUF files, chat ----

def gguf_bytes(arch="llama", dims=(64,), type_id=0, data=256, cut=0, extra_kv=()):
    """A GGUF v3 file with `general.architecture = arch` and one tensor `w`."""
    def string(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b
    kvs = [(k, 8, string(v)) for k, v in [("general.architecture", arch), *extra_kv]]
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs))
    for key, kind, value in kvs:
        out += string(key) + struct.pack("<I", kind) + value
    out += string("w") + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, 0)
    out += b"\0" * (-len(out) % 32) + b"\0" * data
    return out[: len(out) - cut] if cut else out


def test_hostile_gguf_files_are_refused_naming_file_tensor_and_type(lab, tmp_path):
    _, kc = lab
    cases = {
        "truncated.gguf": (gguf_bytes(cut=10), ["truncated.gguf", "truncated", "`w`", "F32"]),
        "q3k.gguf": (gguf_bytes(dims=(256,), type_id=11, data=110), ["q3k.gguf", "`w`", "Q3_K"]),
        "type-77.gguf": (gguf_bytes(type_id=77), ["type-77.gguf", "`w`", "ggml type 77"]),
        "mamba.gguf": (gguf_bytes(arch="mamba"), ["mamba.gguf", "`mamba`", "llama"]),
        "blocks.gguf": (gguf_bytes(dims=(40,), type_id=8, data=68), ["blocks.gguf", "`w`", "Q8_0", "block"]),
        "overflow.gguf": (gguf_bytes(dims=(1 << 40, 1 << 40)), ["overflow.gguf", "`w`", "overflows"]),
        "no-sizes.gguf": (gguf_bytes(), ["no-sizes.gguf", "llama.block_count"]),
        "header.gguf": (gguf_bytes()[:20], ["header.gguf", "truncated"]),
    }
    for name, (data, contains) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        refused(kc, f"%load {path}", "FileError", *contains)


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%model llama --heads 4 --kv-heads 3 --dim 32", "UsageError", ["num_key_value_heads", "multiple"]),
        ("%model llama --kv-heads 0", "UsageError", ["--kv-heads"]),
        ("%model llama --heads 3 --dim 32", "UsageError", ["hidden_size", "multiple"]),
        ("%model llama --layers 100000", "UsageError", ["num_hidden_layers", "4096"]),
        ('%chat "hello"', "UsageError", ["no chat template"]),
        ("%chat", "UsageError", ["no chat template"]),
    ],
)
def test_hostile_model_and_chat_commands_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ('%cache "12" --names "' + "*" * 20000 + 'x"', "UsageError", ["no hook point is named"]),
        ('%cache "12" --names "blocks.0.hook_resid_pre,,"', "UsageError", ["empty pattern"]),
        ('%cache "12" --budget nan', "UsageError", ["--budget"]),
        ('%cache "12" --budget 0.000001', "MemoryError", ["over the cache budget"]),
        ('%cache "' + "1" * 5000 + '"', "UsageError", ["context"]),
        ('%logit-lens "12" --top 1000000000', "UsageError", ["--top"]),
        ('%logit-lens "12" --top -1', "UsageError", ["--top"]),
        ("%heads induction --length -5", "UsageError", ["--length"]),
        ("%heads induction --length 100", "UsageError", ["--length", "positions"]),
        ("%heads induction --seed -1", "UsageError", ["--seed"]),
        ("%heads induction --batch 100000", "UsageError", ["--batch"]),
        ('%ablate ' + "0.0 " * 2000 + '"12"', "UsageError", ["more than 1024"]),
        ('%ablate 0.0 --metric logit-diff:1 "12"', "UsageError", ["logit-diff:A,B"]),
        ('%ablate 0.x "12"', "UsageError", ["LAYER.HEAD"]),
        ('%ablate -1 "12"', "UsageError", ["outside the model's layers"]),
        ('%ablate 99999999999999999999 "12"', "UsageError", ["not a part of the model"]),
        ('%patch "12" "13" --metric logit-diff:#-1,2', "UsageError", ["outside the vocabulary"]),
        ('%patch "12" "1" --metric logit-diff:1,2', "UsageError", ["same number"]),
        ('%attribute "12" --target 123456', "UsageError", ["not one token"]),
        ('%attribute "" --target 1', "UsageError", ["no tokens"]),
    ],
)
def test_hostile_inspection_commands_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%params 1x=2", "UsageError", ["1x=2"]),
        ("%params lr=abc fresh=1", "UsageError", ["lr"]),
        ("%params batch=0 fresh=1", "UsageError", ["batch"]),
        ("%params big=" + "x" * (65 << 10), "UsageError", ["at most 64 KiB"]),
        ("%params " + " ".join(f"p{i}=1" for i in range(1100)), "UsageError", ["at most 1024 parameters"]),
        # 40 KiB, expanded 30 times in one word: refused before the word is built.
        ("%params wide=" + "w" * (40 << 10) + "\n%echo " + "$wide" * 30, "UsageError", ["$wide", "longer than 1024 KiB"]),
        ("%params n=-3\n%train $n", "UsageError", ["-3"]),
    ],
)
def test_hostile_params_are_refused_and_change_nothing(lab, code, ename, contains):
    _, kc = lab
    refused(kc, code, ename, *contains)
    _, outputs = execute(kc, "%params")
    assert "fresh" not in result(outputs)["params"], "a refused %params kept a parameter"
    _, outputs = execute(kc, "%hparams")
    assert result(outputs)["lr"] != "abc"


@pytest.fixture(scope="module")
def smollm2():
    km, kc = start()
    reply, _ = execute(kc, "%device cpu\n%load SmolLM2-135M-Instruct", timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def chat_state(kc):
    reply, outputs = execute(kc, '%chat --show "next"')
    assert reply["content"]["status"] == "ok", reply["content"]
    return result(outputs)["prompt"]


def test_a_chat_with_bad_arguments_or_too_long_is_refused_and_keeps_the_conversation(smollm2):
    _, kc = smollm2
    reply, outputs = execute(kc, '%chat "Say hi." --max-tokens 3', timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    before = chat_state(kc)
    assert "Say hi." in before
    for code, contains in [
        ('%chat "x" --max-tokens 100000000', "--max-tokens"),
        ('%chat "x" --temperature -1', "--temperature"),
        ('%chat "x" --top-p 0', "--top-p"),
        ('%chat "x" --top-k 0', "--top-k"),
        ('%chat "x" --temperature nan', "--temperature"),
        ('%chat "' + "word " * 9000 + '"', "at most 8192"),
    ]:
        refused(kc, code, "UsageError", contains)
        assert chat_state(kc) == before, f"{code[:40]} changed the conversation"


def test_an_interrupted_reply_leaves_the_conversation_as_it_was(smollm2):
    km, kc = smollm2
    before = chat_state(kc)
    msg_id = kc.execute('%chat "Write a very long story about a dragon." --max-tokens 2000 --temperature 0.7 --seed 1')
    time.sleep(3)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=TIMEOUT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert chat_state(kc) == before


@pytest.mark.parametrize(
    "code",
    [
        '%patch "{0} Paris" "{0} Rome" --metric logit-diff:Paris,Rome --over heads',
        "%heads induction --length 250 --batch 64",
        '%ablate heads "{0}"',
        '%cache "{0}{0}{0}{0}{0}"',
    ],
)
def test_inspecting_a_real_model_stops_within_a_second_of_an_interrupt(smollm2, code):
    km, kc = smollm2
    before = chat_state(kc)
    text = " ".join(f"word{i} and" for i in range(100))
    content, took = interrupted(km, kc, code.format(text), wait=4)
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
    assert took < 1.0, f"{code[:30]}: the interrupt took {took:.2f} s"
    assert chat_state(kc) == before


def test_chat_templates_that_loop_or_raise_are_stopped_with_an_error(tmp_path):
    import shutil

    km, kc = start()
    try:
        chars = tmp_path / "chars.txt"
        chars.write_text("abcdefghij hello")
        for name, template, contains in [
            ("loop", "{% for i in range(100000000) %}{% for j in range(100000000) %}x{% endfor %}{% endfor %}", "chat template"),
            ("raise", "{{ raise_exception('only user turns, please') }}", "only user turns, please"),
            ("syntax", "{% for m in messages %}", "chat template"),
        ]:
            model = tmp_path / name
            shutil.copytree(os.path.join(os.environ["TCHLAB_FIXTURES"], "llama-tied"), model)
            (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
            reply, _ = execute(kc, f"%device cpu\n%load {model}\n%tokenizer char {chars}", timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok", reply["content"]
            started = time.time()
            reply, _ = execute(kc, '%chat "hello"', timeout=TIMEOUT)
            assert reply["content"]["status"] == "error" and contains in reply["content"]["evalue"], reply["content"]
            assert time.time() - started < 30, f"{name}: the template ran for {time.time() - started:.0f} s"
            alive, _ = execute(kc, "%echo alive")
            assert alive["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---- the wire ----

def test_a_replay_with_an_upper_case_signature_is_dropped(lab):
    km, kc = lab
    session = kc.session
    socket = shell_socket(km)
    msg = session.msg("execute_request", {"code": "%step", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    frames = session.serialize(msg)
    socket.send_multipart(frames)
    first = socket.poll(60_000) and socket.recv_multipart()
    assert first, "the original is answered"
    step_after_one = state(kc)[0]
    signature = frames.index(b"<IDS|MSG>") + 1
    for respelt in (frames[signature].upper(), frames[signature] + b"00", frames[signature][:-2]):
        socket.send_multipart(frames[:signature] + [respelt] + frames[signature + 1 :])
    assert not socket.poll(2000), "no re-spelt replay is answered"
    assert state(kc)[0] == step_after_one, "and none trained a step"
    socket.close()


# ---- interrupts of long commands ----

@pytest.mark.parametrize(
    "code",
    [
        '%generate "1" --max-tokens 1000000',
        "%timeit --runs 10000 %eval",
        "%timeit --runs 10000 %generate \"1\" --max-tokens 64",
        "%sweep lr=[1e-3,2e-3,3e-3] --steps 100000",
        "%sweep lr=[1e-3,2e-3,3e-3] --steps 100000 --jobs 2",
        "%lr-find --steps 100000",
        "%train 100000000",
    ],
)
def test_long_commands_stop_within_a_second_of_an_interrupt_and_change_nothing(lab, code):
    km, kc = lab
    before = state(kc)
    content, took = interrupted(km, kc, code)
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
    assert took < 1.0, f"{code}: the interrupt took {took:.2f} s"
    after = state(kc)
    if code.startswith("%train"):
        # Training keeps the steps it finished; the rest of the state agrees with them.
        assert after[0] > before[0] and after[1] == after[0] + (before[1] - before[0])
    else:
        assert after == before, f"{code} changed the session"
    assert execute(kc, "%echo alive")[0]["content"]["status"] == "ok"


def test_reading_a_large_corpus_is_interruptible(lab, tmp_path):
    km, kc = lab
    corpus = tmp_path / "big.txt"
    with open(corpus, "w") as f:
        # The session's character tokenizer knows these twelve characters (no newline).
        chunk = "0123456789+=" * 100_000
        for _ in range(100):
            f.write(chunk)
    before = state(kc)
    content, took = interrupted(km, kc, f"%data text {corpus}", wait=0.2)
    assert content["ename"] == "KeyboardInterrupt", content
    assert took < 1.0, f"{took:.2f} s"
    assert state(kc) == before, "the data set is the one before"


def test_an_interrupt_while_idle_reaches_no_later_cell_and_one_on_arrival_is_kept(lab):
    km, kc = lab
    km.interrupt_kernel()
    time.sleep(0.3)
    reply, _ = execute(kc, "%eval")
    assert reply["content"]["status"] == "ok", "an interrupt sent while idle is not kept for later"
    msg_id = kc.execute("%train 100000000")
    km.interrupt_kernel()  # at once: the cell is queued or starting
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"]["msg_id"] == msg_id:
            break
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert execute(kc, "%eval")[0]["content"]["status"] == "ok"


def test_every_kind_of_request_survives_a_burst_of_garbage(lab):
    km, kc = lab
    before = state(kc)
    # (Text that is not a command is Rust, whose first cell compiles for minutes: Rust
    # cells' faults are tested in tests/rust_cells.)
    for code in ["%\x00\x01\x02", "%" * 10000, "%echo " + "é" * 100000, "%%", "%%time", "%%writefile", "%set " + "a=" * 5000]:
        execute(kc, code)
    for cursor in [0, 5, 10**9]:
        kc.complete("%tr", cursor)
        kc.get_shell_msg(timeout=TIMEOUT)
        kc.inspect("%train", cursor)
        kc.get_shell_msg(timeout=TIMEOUT)
    kc.history(hist_access_type="range", start=-5, stop=10**12)
    kc.get_shell_msg(timeout=TIMEOUT)
    assert state(kc) == before
    assert execute(kc, "%echo alive")[0]["content"]["status"] == "ok"


# ---- explorers and their widgets ----

@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ("%explore", "UsageError", ["WHAT"]),
        ("%explore nonsense", "UsageError", ["generate, attention, train", "nonsense"]),
        ("%explore generate", "UsageError", ["needs a text"]),
        ('%explore attention ""', "UsageError", ["no tokens"]),
        ('%explore attention "xyz"', "UsageError", ["'x'", "vocabulary"]),
        ('%explore train "text"', "UsageError", ["takes no text"]),
        ("%explore train --from no-such-snapshot", "UsageError", ["no-such-snapshot"]),
        ('%explore generate "1" --from early', "UsageError", ["--from is for `%explore train`"]),
        ("%sweep lr=[1e-3] --jobs 0", "UsageError", ["--jobs must be between 1 and 64"]),
        ("%sweep lr=[1e-3] --jobs 100000", "UsageError", ["--jobs must be between 1 and 64"]),
        ("%sweep lr=[1e-3] --jobs -1", "UsageError", ["--jobs"]),
        ("%sweep --show /nonexistent/study", "FileError", ["/nonexistent/study"]),
        ("%sweep lr=[1e-3] --schedule pbt --rounds 0", "UsageError", ["--rounds must be between 1 and 1000"]),
        ("%sweep lr=[1e-3] --schedule pbt --rounds 100000", "UsageError", ["--rounds must be between 1 and 1000"]),
        ("%sweep lr=[1e-3] --rounds 3", "UsageError", ["--rounds is for --schedule pbt"]),
        ("%sweep lr=[1e-3] --on slurm", "UsageError", ["--on slurm needs --study DIR"]),
        ("%sweep lr=[1e-3] --on mars", "UsageError", ["--on mars"]),
        ("%sweep lr=[1e-3] --partition debug", "UsageError", ["--partition is for --on slurm"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --partition 'a;b'", "UsageError", ["partition name"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --partition \"$(printf 'x\\n#SBATCH')\"", "UsageError", ["partition name"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --time '1:00;rm -rf ~'", "UsageError", ["--time"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --gpus 999", "UsageError", ["--gpus must be between 0 and 64"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --cpus 0", "UsageError", ["--cpus must be between 1 and 1024"]),
        ("%sweep lr=[1e-3] --on slurm --study /tmp/never --jobs 0", "UsageError", ["--jobs must be between 1 and 64"]),
        ("%sweep --attach /nonexistent/sweep", "FileError", ["/nonexistent/sweep/sweep.json"]),
        ("%sweep lr=[1e-3] --attach /tmp", "UsageError", ["takes only --adopt"]),
    ],
)
def test_hostile_explore_and_search_commands_are_refused_and_change_nothing(lab, code, ename, contains):
    refused(lab[1], code, ename, *contains)


def test_hostile_widget_values_are_refused_in_the_explorer_and_change_nothing(lab):
    _, kc = lab
    before = state(kc)
    _, outputs = execute(kc, "%explore train")
    opens = {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in outputs if m["msg_type"] == "comm_open"}
    named = {s.get("description"): cid for cid, s in opens.items() if s.get("description")}
    for control, value, says in [
        ("batch", 0, "outside 1..512"),
        ("batch", 10**30, "outside 1..512"),
        ("learning rate", 10.0, "outside"),
        ("learning rate", -1e-3, "outside"),
        ("weight decay", float("nan"), "cannot take"),
        ("warm-up steps", 2.5, "whole numbers"),
        ("schedule", 99, "cannot take"),
        ("schedule", -1, "cannot take"),
        ("steps per try", "many", "cannot take"),
        ("steps per try", [1, 2], "cannot take"),
    ]:
        caused = send_comm(kc, named[control], {"method": "update", "state": {"value" if control != "schedule" else "index": value}, "buffer_paths": []})
        errors = [o for m in caused if m["msg_type"] == "comm_msg" for o in m["content"]["data"].get("state", {}).get("outputs", []) if o["output_type"] == "error"]
        assert errors and says in errors[-1]["evalue"], (control, value, errors)
    # Nothing reached the trainer: a click trains with the controls' own values.
    assert state(kc) == before
    caused = send_comm(kc, named["train"], {"method": "custom", "content": {"event": "click"}})
    said = [o for m in caused if m["msg_type"] == "comm_msg" for o in m["content"]["data"].get("state", {}).get("outputs", [])]
    assert said and "try-1: 50 steps" in said[-1]["text"] and "batch=8 " in said[-1]["text"], said
    assert execute(kc, "%echo alive")[0]["content"]["status"] == "ok"


STUDY_HEADER = {"tchlab_study": 1, "params": [["lr", "log(1e-4,1e-2)"]], "method": "random", "schedule": "none", "steps": 5}
TRIAL = {"id": 1, "values": [["lr", "0.001"]], "losses": [[6, 2.4]], "score": 2.3, "status": "done"}


@pytest.mark.parametrize(
    "lines, contains",
    [
        ([], ["empty"]),
        (["garbage"], ["line 1", "not a tchlab study header"]),
        ([{**STUDY_HEADER, "tchlab_study": 7}], ["study format 7"]),
        ([{**STUDY_HEADER, "params": []}], ["1 to 64"]),
        ([{**STUDY_HEADER, "params": [["lr", "log(-1,2)"]]}], ["line 1", "positive bounds"]),
        ([{**STUDY_HEADER, "params": [["nonsense", "[1,2]"]]}], ["line 1", "nonsense"]),
        ([STUDY_HEADER, {**TRIAL, "id": 0}], ["line 2", "outside 1..1000"]),
        ([STUDY_HEADER, {**TRIAL, "id": 10**12}], ["line 2", "outside 1..1000"]),
        ([STUDY_HEADER, {**TRIAL, "values": [["batch", "8"]]}], ["line 2", "other hyperparameters"]),
        ([STUDY_HEADER, {**TRIAL, "status": "exploded"}], ["line 2", "exploded"]),
        ([STUDY_HEADER, {**TRIAL, "losses": "many"}], ["line 2", "not a trial record"]),
        ([STUDY_HEADER, "[]", TRIAL], ["line 2"]),
    ],
)
def test_hostile_study_files_are_refused_naming_file_and_line(lab, tmp_path, lines, contains):
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (tmp_path / "study.jsonl").write_text(text)
    refused(lab[1], f"%sweep --show {tmp_path}", "FileError", "study.jsonl", *contains)


SWEEP_FILE = {
    "tchlab_slurm_sweep": 1,
    "plan": {"params": [["lr", "log(1e-4,1e-2)"]], "method": "random", "schedule": "none", "steps": 5, "trials": 4, "rounds": 4, "seed": 0, "adopt": False},
    "options": {},
    "program": "/bin/false",
    "device": "cpu",
}
ELEMENT = {"trial": 1, "rung": 0, "steps": 5, "from": None, "set": [["lr", "0.001"]], "keep": True, "values": [["lr", "0.001"]], "lineage": []}


@pytest.mark.parametrize(
    "sweep, arrays, contains",
    [
        ("garbage", None, ["sweep.json", "not a tchlab Slurm sweep"]),
        ({**SWEEP_FILE, "tchlab_slurm_sweep": 9}, None, ["sweep.json", "format 9"]),
        ({**SWEEP_FILE, "plan": {**SWEEP_FILE["plan"], "params": []}}, None, ["sweep.json", "nothing to sweep"]),
        ({**SWEEP_FILE, "plan": {**SWEEP_FILE["plan"], "steps": 0}}, None, ["sweep.json", "--steps"]),
        ({**SWEEP_FILE, "plan": {**SWEEP_FILE["plan"], "trials": 10**9}}, None, ["--trials"]),
        ({**SWEEP_FILE, "plan": {**SWEEP_FILE["plan"], "schedule": "pbt", "rounds": 10**9}}, None, ["sweep.json", "--rounds"]),
        ({**SWEEP_FILE, "options": {"partition": "x\n#SBATCH --uid=0"}}, None, ["sweep.json", "partition name"]),
        (SWEEP_FILE, "garbage", ["arrays.jsonl", "line 1"]),
        (SWEEP_FILE, {"job": "1; rm -rf ~", "tasks": [ELEMENT]}, ["arrays.jsonl", "not an array tchlab submitted"]),
        (SWEEP_FILE, {"job": "12", "tasks": [{**ELEMENT, "trial": 0}]}, ["arrays.jsonl", "outside 1..1000"]),
        (SWEEP_FILE, {"job": "12", "tasks": [{**ELEMENT, "values": [["batch", "8"]]}]}, ["arrays.jsonl", "not a rung of this sweep"]),
        (SWEEP_FILE, {"job": "12", "tasks": [{**ELEMENT, "rung": 10**9}]}, ["arrays.jsonl", "not a rung of this sweep"]),
        (SWEEP_FILE, {"job": "12", "tasks": [ELEMENT, ELEMENT]}, ["arrays.jsonl", "two rungs unreported"]),
        (SWEEP_FILE, {"job": "12", "tasks": [{**ELEMENT, "trial": 3}]}, ["do not number the trials"]),
    ],
)
def test_hostile_slurm_sweep_directories_are_refused_by_attach(lab, tmp_path, sweep, arrays, contains):
    (tmp_path / "sweep.json").write_text(sweep if isinstance(sweep, str) else json.dumps(sweep))
    if arrays is not None:
        (tmp_path / "arrays.jsonl").write_text((arrays if isinstance(arrays, str) else json.dumps(arrays)) + "\n")
    refused(lab[1], f"%sweep --attach {tmp_path}", "FileError", *contains)


def test_study_paths_that_are_not_studies_are_refused_without_hanging(lab, tmp_path):
    _, kc = lab
    os.mkfifo(tmp_path / "fifo")
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "study.jsonl", "wb") as f:
        f.truncate(300 << 20)
    (tmp_path / "file").write_text("x")
    refused(kc, f"%sweep --show {tmp_path / 'fifo'}", "FileError", "FIFO")
    refused(kc, f"%sweep --show {big}", "MemoryError", "study.jsonl")
    refused(kc, f"%sweep --show {tmp_path / 'empty-dir'}", "FileError", "empty-dir")
    # A study is never written over a file, or into a directory that holds one.
    refused(kc, f"%sweep lr=[1e-3] --steps 1 --study {tmp_path / 'file'}", "UsageError", "not a directory")
    refused(kc, f"%sweep lr=[1e-3] --steps 1 --study {big}", "UsageError", "holds a study already")
    assert (tmp_path / "file").read_text() == "x" and (big / "study.jsonl").stat().st_size == 300 << 20
