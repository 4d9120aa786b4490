"""Each Colab notebook runs top to bottom in its smoke mode (seconds, no download)."""

import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = pathlib.Path(__file__).parents[1] / "notebooks"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name, printed", [
    ("quickstart", "sal test accuracy per epoch"),
    ("sweeps", "SAL clip none: final test accuracy"),
])
def test_notebook_executes_without_error(monkeypatch, name, printed):
  monkeypatch.setenv("SAL_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {
                                       "path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = "".join(o.get("text", "") for c in nb.cells
                    if c.cell_type == "code" for o in c.get("outputs", []))
  assert printed in outputs
  assert any(o.get("output_type") == "display_data" for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))
