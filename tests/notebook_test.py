"""Each Colab notebook runs top to bottom in its smoke mode (seconds, offline),
and names the repository where setup.cfg does."""

import configparser
import json
import pathlib
import re

import pytest

from tests.conftest import write_mnist_npz

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name, printed", [
    ("quickstart", "sal test accuracy per epoch"),
    ("sweeps", "SAL clip none: final test accuracy"),
])
def test_notebook_executes_without_error(monkeypatch, tmp_path, name, printed):
  monkeypatch.setenv("SAL_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # Local files in MNIST's real format: the offline path a user takes.
  monkeypatch.setenv("SAL_JAX_DATA_DIR", str(write_mnist_npz(tmp_path, 1024,
                                                             200)))
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {
                                       "path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = "".join(o.get("text", "") for c in nb.cells
                    if c.cell_type == "code" for o in c.get("outputs", []))
  assert printed in outputs
  if name == "quickstart":
    assert str(tmp_path / "mnist.npz") in outputs  # trained on the files
  assert any(o.get("output_type") == "display_data" for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("name", ["quickstart", "sweeps"])
def test_badge_and_install_cell_point_at_setup_cfg_s_url(name):
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  url = cfg["metadata"]["url"]
  repo = re.match(r"https://github.com/(.+)", url).group(1)
  cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
  text = "".join("".join(c["source"]) for c in cells)
  assert (f"https://colab.research.google.com/github/{repo}/blob/main/"
          f"notebooks/{name}.ipynb") in text
  assert f'REPOSITORY = "{url}"' in text
  assert set(re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git|/|\")",
                        text)) == {repo}
