"""Every workbench notebook, run by nbval against the simulator (a fresh store and index each),
and the notebooks' shape: one ``parameters`` cell that papermill can read, validated next."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest

from sdrlab.runs import notebook_parameters

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SANITIZE = Path(__file__).with_name("nbval-sanitize.cfg")


def test_the_workbench_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == [
        "01-acquire.ipynb", "02-explore.ipynb", "03-history.ipynb", "04-tdoa.ipynb", "05-campaign.ipynb",
        "report.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_papermill_reads_whole_and_a_check_after_it(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    cell = nb.cells[tagged[0]]
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    # every assignment has a comment, and papermill's inspection finds every one of them
    assert all("#" in line for line in cell.source.splitlines() if re.match(r"^\w+ = ", line))
    assert list(notebook_parameters(path)) == assigned
    following = next(c for c in nb.cells[tagged[0] + 1:] if c.cell_type == "code")
    assert "Check the parameters" in following.source
    assert nb.metadata["kernelspec"]["name"] == "python3"


#: nbval runs at once: each mostly waits on its simulated receivers' real-time streams, so three
#: side by side take the time of the longest (~35 s) instead of the sum (~140 s)
NBVAL_AT_ONCE = 3


def _nbval(path: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SDRLAB_STORE": f"file://{tmp}/data", "SDRLAB_DB": f"sqlite:///{tmp}/data/index.db",
           "SDRLAB_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--nbval-lax",
         "--nbval-sanitize-with", str(SANITIZE), "--nbval-cell-timeout", "120", "--rootdir", str(tmp),
         str(path)],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=600,
    )


@pytest.fixture(scope="module")
def nbval_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every notebook under nbval, :data:`NBVAL_AT_ONCE` at a time, each in a folder of its own;
    the checkout's own data folder snapshotted around them all."""
    before = _snapshot(ROOT / "sdrlab-data")
    tmps = {p.name: tmp_path_factory.mktemp(p.stem) for p in NOTEBOOKS}
    with ThreadPoolExecutor(NBVAL_AT_ONCE) as pool:
        runs = dict(zip(tmps, pool.map(lambda p: _nbval(p, tmps[p.name]), NOTEBOOKS)))
    return {"runs": runs, "tmp": tmps, "untouched": _snapshot(ROOT / "sdrlab-data") == before}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval(path, nbval_runs):
    """``--nbval-lax``: every cell must run; the cells marked NBVAL_CHECK_OUTPUT must print what the
    committed notebook says (station counts and statuses of the simulated scene)."""
    nb = nbformat.read(str(path), as_version=4)
    checked = sum("NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells if c.cell_type == "code")
    assert checked >= 2
    r = nbval_runs["runs"][path.name]
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert re.search(rf"\b{n_code} passed\b", summary), summary
    # the notebooks wrote only where they were told to, never into the checkout's own data
    assert (nbval_runs["tmp"][path.name] / "data" / "index.db").exists()
    assert nbval_runs["untouched"]


def _snapshot(d: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in d.rglob("*")} if d.exists() else {}
