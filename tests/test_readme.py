"""The README keeps exactly two set-up commands, and CI runs its test command verbatim."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2
    run_suite, run_tests = commands
    assert "nsa-bench sweep" in run_suite and "pytest" in run_tests
    assert run_tests in (REPO / ".ci" / "run").read_text()
