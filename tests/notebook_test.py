"""The quickstart notebook runs top to bottom (on generated data)."""

import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.timeout(600)
def test_quickstart_notebook_executes_without_error(monkeypatch):
  monkeypatch.setenv("SAL_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {
                                       "path": str(NOTEBOOK.parent)}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = "".join(o.get("text", "") for c in nb.cells
                    if c.cell_type == "code" for o in c.get("outputs", []))
  assert "sal test accuracy per epoch" in outputs
  assert any(o.get("output_type") == "display_data" for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))
