"""Re-run the workbench notebooks against the simulator (fresh store and index) and write back
into them the outputs that nbval checks (cells marked ``# NBVAL_CHECK_OUTPUT``); every other
output is cleared, so the committed notebooks stay small and diff well.

    .venv/bin/python scripts/refresh_notebooks.py [notebooks/01-acquire.ipynb ...]

Run it after changing what a checked cell prints; ``make test`` then holds the notebooks to it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parent.parent
CHECK = "NBVAL_CHECK_OUTPUT"


def refresh(path: Path, scratch: Path) -> None:
    env = {"SDRLAB_STORE": f"file://{scratch / 'data'}", "SDRLAB_DB": f"sqlite:///{scratch / 'data' / 'index.db'}",
           "SDRLAB_PROGRESS": "0"}
    os.environ.update(env)
    executed = scratch / path.name
    papermill.execute_notebook(str(path), str(executed), kernel_name="python3", progress_bar=False,
                               cwd=str(path.parent))
    ran = nbformat.read(str(executed), as_version=4)
    by_id = {c.get("id"): c for c in ran.cells}
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        done = by_id.get(cell.get("id"))
        if CHECK in cell.source and done is not None:
            cell.outputs = [o for o in done.outputs if o.get("output_type") != "display_data"]
            cell.execution_count = done.execution_count  # nbval: a checked cell must have been run
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, str(path))
    print(f"{path.relative_to(ROOT)}: {sum(CHECK in c.source for c in nb.cells)} checked cells refreshed")


def main(argv: list[str]) -> int:
    paths = [Path(p).resolve() for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="sdrlab-refresh-") as tmp:
            refresh(path, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
