"""The README's main command, the command-line entry point, and dependency lists that must not drift."""

import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from diffusion_notes.__main__ import main as cli_main
from diffusion_notes.demo import format_error_table, mixture_errors, new_run_folder

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip() and not r.strip().startswith("-")}


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {r for r in project["dependencies"]} | {r for r in project["optional-dependencies"]["dev"]}
    pip_section = re.search(r"- pip:\n((?:\s+- .*\n?)+)", (ROOT / "environment.yml").read_text()).group(1)
    conda_pip = [line.strip()[2:] for line in pip_section.splitlines() if line.strip().startswith("- ")]
    assert _requirement_names(conda_pip) == _requirement_names(declared)
    assert set(conda_pip) - {"-e .[dev]"} == declared, "same names and the same version specifiers"
    assert "-e .[dev]" in conda_pip


def test_diffusers_is_a_test_only_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "diffusers" not in _requirement_names(project["dependencies"])
    offenders = [str(p) for p in (ROOT / "diffusion_notes").rglob("*.py") if re.search(r"^\s*(from|import) diffusers", p.read_text(), re.M)]
    assert offenders == []


def test_mixture_demo_errors_shrink_and_plms_wins():
    result = mixture_errors(n=64)
    err = result["errors"]
    assert err["ddim", 100] < err["ddim", 10] and err["plms", 100] < err["plms", 10]
    assert err["plms", 50] < err["ddim", 50] / 5
    table = format_error_table(err)
    last = table.splitlines()[-1].split()
    assert last[0] == "50-100" and abs(float(last[2]) - math.log(err["plms", 50] / err["plms", 100]) / math.log(2)) < 0.01
    assert "order" not in table, "one fitted order misdescribes a curve that keeps steepening"


def test_run_folders_never_reuse_a_name(tmp_path):
    (tmp_path / "demo-001").mkdir()
    (tmp_path / "demo-001" / "mine.png").write_text("user file")
    folder = new_run_folder(tmp_path)
    assert folder.name == "demo-002" and (tmp_path / "demo-001" / "mine.png").read_text() == "user file"


def test_demo_command_writes_its_figure(tmp_path):
    out = subprocess.run([sys.executable, "-m", "diffusion_notes", "demo", "--outdir", str(tmp_path), "--skip-digits"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "PLMS" in out.stdout and (tmp_path / "demo-001" / "mixture_samplers.png").stat().st_size > 10_000


def test_cli_usage_and_unknown_command(capsys):
    assert cli_main([]) == 0 and "demo" in capsys.readouterr().out
    assert cli_main(["paint"]) == 2 and "unknown command" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) == 2, "the README gives exactly two commands"
    demo_command, test_command = blocks
    assert "diffusion_notes demo" in demo_command and "pytest" in test_command
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
