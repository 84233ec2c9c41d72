"""The front door: the README opens with the two fresh-machine commands, and CI runs exactly those two, in order."""
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"^```bash\n(.+?)\n```$", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def ci_steps() -> list[tuple[str, str]]:
    steps = []
    for line in (ROOT / ".ci/run").read_text().splitlines():
        if line.startswith("step "):
            _, number, command = shlex.split(line)
            steps.append((number, command))
    return steps


def test_ci_runs_the_readme_commands_verbatim_in_order():
    first, second = readme_commands()[:2]
    assert "orchestrator/sweep.py" in first and "pytest" in second, "README: run the main job first, then the tests"
    assert ci_steps() == [("1", first), ("2", second)]
