"""papermill runs tchlab notebooks with parameters: the translator from
python/tchlab-papermill (installed by `make`) writes the injected cell as `%params`
lines, and the kernel reads them."""

import pathlib
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from cells import RESULT

KERNELSPEC = {"name": "tchlab", "display_name": "tchlab", "language": "rust"}


def notebook(path):
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "rust"}})
    nb.cells = [
        new_code_cell("%params steps=4 lr=1e-3 title=default", metadata={"tags": ["parameters"]}),
        new_code_cell("%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32"),
        new_code_cell("%train $steps"),
        new_code_cell("%status"),
        new_code_cell("%hparams"),
        new_code_cell("%echo run: $title"),
    ]
    nbformat.write(nb, path)


def papermill(*args):
    return subprocess.run([sys.executable, "-m", "papermill", *map(str, args)], capture_output=True, text=True, timeout=300)


def result(cell):
    return next(o["data"][RESULT] for o in cell.outputs if o.output_type == "execute_result")


def test_papermill_injects_params_that_later_commands_use(tmp_path):
    notebook(tmp_path / "in.ipynb")
    run = papermill(tmp_path / "in.ipynb", tmp_path / "out.ipynb", "-p", "steps", 12, "-p", "lr", 3e-3, "-p", "title", 'the "best" run', "-k", "tchlab")
    assert run.returncode == 0, run.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert injected.source.splitlines() == ["# Parameters", "%params steps=12", "%params lr=0.003", '%params title="the \\"best\\" run"']
    cells = [c for c in out.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in cells for o in c.outputs)
    assert result(cells[4])["step"] == 12, "the injected steps, not the default 4"
    hparams = result(cells[5])
    assert float(hparams["lr"]) == 3e-3
    echoed = "".join(o.get("text", "") for o in cells[6].outputs)
    assert echoed.strip() == 'run: the "best" run'


def test_papermill_lists_a_notebooks_parameters(tmp_path):
    notebook(tmp_path / "in.ipynb")
    run = papermill("--help-notebook", tmp_path / "in.ipynb")
    assert run.returncode == 0, run.stderr
    for name in ["steps", "lr", "title"]:
        assert name in run.stdout, run.stdout
    # The teaching notebook that declares a parameter.
    run = papermill("--help-notebook", pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "02-training-dynamics.ipynb")
    assert run.returncode == 0 and "steps" in run.stdout, run.stdout + run.stderr
