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
