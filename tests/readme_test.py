"""README.md's promises: its usage example runs, and its test command is CI's."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_usage_example_runs_as_written(capsys):
  example = re.search(r"## Usage\n\n```python\n(.*?)```", README, re.S).group(1)
  exec(compile(example, "README.md", "exec"), {})  # pylint: disable=exec-used
  assert "accuracy" in capsys.readouterr().out


def test_ci_runs_exactly_the_readme_test_command():
  commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
  test_command = commands[1].strip()
  assert test_command == 'python3 -m pip install -e ".[test]" && python3 -m pytest -q'
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert ci[-1].strip() == test_command
