"""The project as an installed distribution: every console script resolves, the judge side imports
without torch, scripts run from a checkout and from other directories, bad input exits 2, and the
wheel carries the sample data and judge prompts that the commands default to."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO_ROOT, run_python

with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
    PYPROJECT = tomllib.load(handle)
SCRIPTS = PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_points_at_a_callable(name):
    module_name, _, attribute = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attribute))


def test_runtime_dependencies_match_requirements_txt():
    with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as handle:
        pinned = {line.strip() for line in handle if line.strip() and not line.startswith("#")}
    declared = set(PYPROJECT["project"]["dependencies"]) | set(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert declared == pinned


def test_judge_side_imports_without_torch():
    """judgekit is used on machines without torch: none of its modules may pull it in."""
    code = ("import importlib, pkgutil, sys; sys.modules['torch'] = None\n"
            "import judgekit, judgekit.commands\n"
            "for package in (judgekit, judgekit.commands):\n"
            "    for info in pkgutil.iter_modules(package.__path__):\n"
            "        importlib.import_module(f'{package.__name__}.{info.name}')\n"
            "print('imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_no_file_edits_the_import_path():
    """Imports come from the installed distribution, never from a path a file adds."""
    edits = []
    for directory, subdirectories, files in os.walk(REPO_ROOT):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.endswith((".py", ".sh")):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    if re.search(r"sys\.path(\.insert|\.append|\[|\s*=)", handle.read()):
                        edits.append(os.path.relpath(path, REPO_ROOT))
    assert edits == []


def test_eval_script_runs_from_another_directory(tmp_path):
    result = run_python([os.path.join(REPO_ROOT, "eval", "elo.py"), "--help"], cwd=str(tmp_path))
    assert "--orderings" in result.stdout


@pytest.mark.parametrize("script, args", [
    ("scripts/plot_training.py", ["{tmp}"]),
    ("scripts/make_tiny_model.py", ["{tmp}/model", "--corpus_dir", "{tmp}"]),
    ("eval/elo.py", ["{tmp}/missing.jsonl"]),
])
def test_bad_input_exits_2_with_one_line(script, args, tmp_path):
    result = run_python([script, *[arg.format(tmp=tmp_path) for arg in args]], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory):
    """The project built as a wheel and installed (without its dependencies) into a folder of its own,
    as `pip install .` would: only what the wheel holds is there."""
    pytest.importorskip("setuptools", minversion="64")
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(REPO_ROOT, name), source / name)
    for package in ("qlorakit", os.path.join("eval", "judgekit")):
        shutil.copytree(os.path.join(REPO_ROOT, package), source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True)
    return root / "site"


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(folder, name), directory)
                  for folder, _, names in os.walk(directory) for name in names if "__pycache__" not in folder)


@pytest.mark.parametrize("checkout_dir, installed_dir", [
    ("qlorakit/sample_data", "qlorakit/sample_data"),
    ("eval/judgekit/prompt_files", "judgekit/prompt_files"),
])
def test_the_wheel_ships_the_data_files(installed_site, checkout_dir, installed_dir):
    assert files_under(installed_site / installed_dir) == files_under(os.path.join(REPO_ROOT, checkout_dir))


def test_installed_commands_default_to_the_packaged_files(installed_site, tmp_path):
    """Away from the checkout, the tiny-model builder trains its tokenizer on the installed sample
    data, the architecture check trains on it, and the judge finds its prompt and reviewer files."""
    code = ("import json, sys\n"
            "from judgekit import prompts\n"
            "from judgekit.commands import review\n"
            "from qlorakit.cli import architecture_matrix, make_tiny_model\n"
            "make_tiny_model.main(['model', '--hidden_size', '64', '--num_layers', '1', '--vocab_size', '300'])\n"
            "args = review.parse_args(['-q', 'q', '-a', 'a', 'b', '-o', 'o'])\n"
            "prompts.load_prompts(args.prompt_file), prompts.load_reviewers(args.reviewer_file)\n"
            "print(json.dumps([make_tiny_model.DEFAULT_CORPUS, architecture_matrix.ALPACA, args.prompt_file,\n"
            "                  args.reviewer_file]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(installed_site)})
    assert result.returncode == 0, result.stderr[-3000:]
    paths = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(os.path.commonpath([path, installed_site]) == str(installed_site) and os.path.exists(path)
               for path in paths)
    assert (tmp_path / "model" / "tokenizer.json").is_file() and (tmp_path / "model" / "config.json").is_file()


@pytest.mark.parametrize("command, module, example", [
    ("qlora-chat", "qlorakit.cli.chat", "examples/chat.py"),
    ("qlora-guanaco-generate", "qlorakit.cli.guanaco_generate", "examples/guanaco_generate.py"),
])
def test_the_examples_are_installed_commands_and_thin_callers(command, module, example):
    assert SCRIPTS[command] == f"{module}:console_main"
    with open(os.path.join(REPO_ROOT, example), encoding="utf-8") as handle:
        assert f"from {module} import console_main" in handle.read()
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        assert f"`{command}`" in handle.read()
    assert "usage:" in run_python([example, "--help"]).stdout


def test_the_finetuning_package_does_not_import_the_judge_side():
    """judgekit builds on qlorakit's torch-free modules; the other direction would make a cycle."""
    import ast

    package = os.path.join(REPO_ROOT, "qlorakit")
    importers = []
    for folder, _, names in os.walk(package):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            tree = ast.parse(open(path, encoding="utf-8").read())
            imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
            imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            if any(module.split(".")[0] == "judgekit" for module in imported):
                importers.append(os.path.relpath(path, REPO_ROOT))
    assert importers == []
