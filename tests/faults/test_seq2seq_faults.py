"""Hostile input to an encoder–decoder through a real kernel: source → target pair files
that lie, overflow or are not files, sources too long for the model, and generation and
attention arguments that cannot work. (A source longer than the model's positions is cut by
the tokenizer, as every model's input is.) Each is a clean error that names the file, the
record or the argument, and the training state is as it was."""

import json
import os

import pytest

from cells import execute
from hostile import TIMEOUT, interrupted, refused, start, state

FIXTURES = os.environ.get("TCHLAB_FIXTURES", "")


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """A kernel with the random T5 fixture (its word-level tokenizer) training on pairs."""
    km, kc = start()
    root = tmp_path_factory.mktemp("pairs")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps({"source": f"w{i} w{i + 1}", "target": f"w{i + 1} w{i}"}) + "\n" for i in range(3, 40)))
    reply, _ = execute(kc, f"%device cpu\n%seed 0\n%load {os.path.join(FIXTURES, 't5-v1')}\n%data pairs {good}\n%set batch=4\n%train 2", timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc, root
    kc.stop_channels()
    km.shutdown_kernel(now=True)


PAIR_FILES = [
    ("no-target.jsonl", '{"source": "w5"}\n', "FileError", ["line 1", "no field `target`"]),
    ("not-json.jsonl", "w5 → w6\n", "FileError", ["line 1"]),
    ("empty.jsonl", "\n\n", "FileError", ["no pairs"]),
    ("blank-targets.jsonl", '{"source": "w5", "target": ""}\n', "FileError", ["no pairs"]),
    ("no-column.csv", "src,tgt\nw5,w6\n", "FileError", ["no column `source`", "src, tgt"]),
    ("ragged.tsv", "source\ttarget\nw5\tw6\textra\n", "FileError", ["record 1"]),
    ("pairs.txt", "w5\tw6\n", "FileError", [".csv or .tsv", ".jsonl"]),
]


@pytest.mark.parametrize("name, text, ename, contains", PAIR_FILES, ids=[p[0] for p in PAIR_FILES])
def test_hostile_pair_files_are_refused_naming_file_and_record(t5, name, text, ename, contains):
    _, kc, root = t5
    path = root / name
    path.write_text(text)
    refused(kc, f"%data pairs {path}", ename, str(path), *contains)


def test_pair_files_that_are_not_files_are_refused_without_hanging(t5):
    _, kc, root = t5
    os.mkfifo(root / "fifo.jsonl")
    refused(kc, f"%data pairs {root / 'fifo.jsonl'}", "FileError", "FIFO")
    (root / "folder.jsonl").mkdir()
    refused(kc, f"%data pairs {root / 'folder.jsonl'}", "FileError", "directory")
    refused(kc, f"%data pairs {root / 'missing.jsonl'}", "FileError", "missing.jsonl")


@pytest.mark.parametrize(
    "code, ename, contains",
    [
        ('%generate "w5" --max-tokens 600', "UsageError", ["--max-tokens 600", "positions"]),
        ('%generate "w5" --beams 1000', "UsageError", ["--beams"]),
        ('%generate "w5" --max-tokens 100000', "UsageError", ["--max-tokens"]),
        ('%attention "w5 w6" --kind cross --layer 9', "UsageError", ["--layer"]),
        ('%attention "w5 w6" --kind diagonal', "UsageError", ["diagonal"]),
        ("%data synth sort --length 4", "UsageError", ["source → target pairs"]),
        ("%eval --beams 1000", "UsageError", ["--beams"]),
        ("%eval --max-tokens 100000000", "UsageError", ["--max-tokens"]),
        ("%set checkpointing=true\n%step", "UsageError", ["checkpointing"]),
    ],
)
def test_hostile_encoder_decoder_commands_change_nothing(t5, code, ename, contains):
    _, kc, _ = t5
    refused(kc, code, ename, *contains)
    execute(kc, "%set checkpointing=false", timeout=TIMEOUT)


@pytest.mark.parametrize(
    "code",
    [
        '%timeit --runs 10000 %generate "w5 w6 w7" --beams 8 --max-tokens 200',
        "%eval --beams 16 --max-tokens 400",
    ],
)
def test_beam_search_stops_within_a_second_of_an_interrupt_and_changes_nothing(t5, code):
    km, kc, _ = t5
    before = state(kc)
    content, took = interrupted(km, kc, code)
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
    assert took < 1.0, f"{code}: the interrupt took {took:.2f} s"
    assert state(kc) == before, f"{code} changed the session"
    assert execute(kc, "%echo alive")[0]["content"]["status"] == "ok"


def test_a_ten_megabyte_source_is_cut_to_the_models_positions_in_bounded_memory(t5):
    km, kc, root = t5
    from hostile import rss_mb
    path = root / "huge-source.jsonl"
    words = " ".join(f"w{3 + i % 90}" for i in range(1_300_000))  # about 5 MB of words, twice
    with open(path, "w") as f:
        f.write(json.dumps({"source": words + " " + words, "target": "w5 w6"}) + "\n")
        f.write("".join(json.dumps({"source": f"w{i} w{i + 1}", "target": f"w{i + 1} w{i}"}) + "\n" for i in range(3, 40)))
    assert path.stat().st_size > 10_000_000
    before = rss_mb(km)
    reply, _ = execute(kc, f"%data pairs {path}\n%train 1", timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert rss_mb(km) - before < 300, "the long source is cut as it is read, not held whole as tokens"
