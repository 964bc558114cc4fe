"""Every notebook under notebooks/ runs top to bottom with nbclient and the tchlab
kernel, with no error except in cells tagged `raises-exception` (which must raise),
and shows at least one plot."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds the teaching notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    missing = [f for f in nb.metadata.get("tchlab", {}).get("requires", []) if not pathlib.Path(f).exists()]
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)} (`make test` installs it when run as root)")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is committed without outputs"
    NotebookClient(nb, kernel_name="tchlab", timeout=180, resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    raised = lambda c: any(o.output_type == "error" for o in c.outputs)
    expected = [c for c in code if "raises-exception" in c.metadata.get("tags", [])]
    errors = [o for c in code if c not in expected for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(raised(c) for c in expected), "cells tagged raises-exception raise"
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert pngs, f"{path.name} shows no plot"
    if path.stem in CHECKS:
        CHECKS[path.stem](code)


def reply(cell) -> str:
    """The text of the last `%chat` reply a cell made (its result's data)."""
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    return results[-1]["data"]["application/vnd.tchlab.result+json"]["text"]


def taught(code):
    """10-teach-it-something: the model did not know the fact before, knows it after, and
    with the adapters off answers as before."""
    asked = [c for c in code if '%chat "What colour is the lighthouse of Varnholm?"' in c.source]
    before, after, off = (reply(c) for c in asked)
    assert "green" not in before.lower(), before
    assert "green" in after.lower(), after
    assert off == before, "with the adapters off, the base answers as it did before training"


def result(cell) -> dict:
    """The JSON result of the last command in a cell."""
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    return results[-1]["data"]["application/vnd.tchlab.result+json"]


def made_small(code):
    """11-make-it-small: int8 and int4 shrink the weights they read and keep perplexity
    close (int8 within 5 %, int4 within 15 %: the goals of 1 % and 5 % are the bench's, on
    a longer text), Wanda loses less than magnitude pruning at the same sparsity, 2:4
    prunes half, and the GGUF file is written and loads."""
    by_source = lambda text: result(next(c for c in code if c.source.strip().endswith(text)))
    int8, int4 = by_source("%quantize int8 --eval"), by_source("%quantize int4 --eval")
    for q, shrink, worse in [(int8, 3.9, 1.05), (int4, 6.0, 1.15)]:
        assert q["bytes_before"] > shrink * q["bytes_after"], q
        assert q["after"]["perplexity"] < worse * q["before"]["perplexity"], q
    magnitude, wanda = by_source("%prune --sparsity 0.5 --eval"), by_source("%prune --sparsity 0.5 --method wanda --eval")
    two_four = by_source("%prune --pattern 2:4 --method wanda --eval")
    for p in (magnitude, wanda, two_four):
        # (A few of the weights are exactly zero already.)
        assert 0.5 <= p["sparsity"] < 0.501 and p["after"]["perplexity"] > p["before"]["perplexity"], p
    assert wanda["after"]["perplexity"] < magnitude["after"]["perplexity"], (wanda, magnitude)
    saved = by_source("%save smollm2-q8_0.gguf --type q8_0")
    assert saved["gguf"]["kind"] == "q8_0" and saved["gguf"]["tensors"] == 272, saved
    assert reply(code[-1]).strip(), "the model read back from its GGUF file answers"


# What some notebooks must show besides running: their own lesson.
def two_models(code):
    """12-two-models: Gemma's tokenizer puts its BOS first and keeps more of the text whole;
    both models have an induction head and predict the repeat far better than the first
    copy; Gemma's strongest sits in a global layer (5, 11 or 17), as the notebook says."""
    by_source = lambda text: [result(c) for c in code if c.source.strip().endswith(text)]
    smol_tokens, gemma_tokens = by_source('%tokenize "naïve café 😀 Schrödinger"')
    assert gemma_tokens["ids"][0] == 2 and smol_tokens["ids"][0] != 2, (smol_tokens, gemma_tokens)
    assert len(gemma_tokens["ids"]) - 1 < len(smol_tokens["ids"]), (smol_tokens, gemma_tokens)
    smol, gemma = by_source("%heads induction")
    for heads in (smol, gemma):
        assert heads["top"][0]["score"] > 0.5 and heads["repeat_loss"] < heads["first_loss"] / 3, heads["top"][:3]
    assert gemma["top"][0]["head"].split(".")[0] in ("5", "11", "17"), gemma["top"][:3]


def encoder_decoder(code):
    """13-encoder-decoder: the tiny T5 learns to reverse five digits (most held-out answers
    exact), and in the head the notebook shows, each of the five rows that write the answer
    puts its largest weight on the source digit it reverses: the anti-diagonal."""
    by_source = lambda text: result(next(c for c in code if c.source.strip().endswith(text)))
    evaluated = by_source("%eval")
    assert evaluated["generated"]["exact_match"] > 0.9, evaluated["generated"]
    cross = by_source('%attention "31415" --kind cross --layer 0 --head 3')
    assert cross["kind"] == "cross" and cross["keys"] == list("31415"), cross
    assert cross["tokens"][:6] == ["="] + list("51413"), cross["tokens"]
    for row, weights in enumerate(cross["attention"][:5]):
        assert max(range(5), key=lambda k: weights[k]) == 4 - row, (row, weights)
    beams = by_source('%generate "27182" --max-tokens 5 --beams 4')
    assert beams["beams"][0]["text"] == "28172" and beams["beams"][0]["score"] > beams["beams"][1]["score"], beams["beams"]


CHECKS = {"10-teach-it-something": taught, "11-make-it-small": made_small, "12-two-models": two_models, "13-encoder-decoder": encoder_decoder}
