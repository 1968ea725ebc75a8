"""The pre-commit hook, run by the real pre-commit in a throwaway repository.

The hook repository is a snapshot of this checkout (work tree included, committed in a temporary
git repository, as ``pre-commit try-repo`` does); the project repository's
``.pre-commit-config.yaml`` points at it. pre-commit then builds its own virtualenv and
``pip install``s archlint there: a constraints file pins torch (and the other dependencies) to the
versions of the running interpreter, so pip takes the wheels already on this machine instead of
the newest torch with its multi-GB CUDA build (docs/integrations.md tells users to do the same).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from archlint.rules.saturating_stack import SaturatingStack

from helpers import ROOT

PRE_COMMIT = shutil.which("pre-commit") or str(Path(sys.executable).parent / "pre-commit")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not Path(PRE_COMMIT).exists(),
    reason="needs git and pre-commit (pip install -e '.[test]')")

PLAIN_SCRIPT = '''\
"""A training script: no model defined here, nothing built at import."""
import sys

def main():
    print("training", sys.argv)

if __name__ == "__main__":
    main()
'''


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _git_init(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "test@example.com")
    _git(path, "config", "user.name", "archlint test")
    _git(path, "config", "commit.gpgsign", "false")


def _commit_all(path: Path, message: str) -> str:
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", message)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def _snapshot_of_checkout(dest: Path) -> str:
    """This checkout's hook definition and package, committed in a repository of its own."""
    _git_init(dest)
    shutil.copytree(ROOT / "archlint", dest / "archlint",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    return _commit_all(dest, "snapshot")


def _constraints(path: Path) -> Path:
    pins = []
    for dist in ("torch", "numpy", "click", "PyYAML"):
        try:
            version = metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{dist}=={version}")
    path.write_text("\n".join(pins) + "\n")
    return path


def _pre_commit(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRE_COMMIT, "run", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture
def pre_commit_home(tmp_path):
    home = tmp_path / "pre-commit-home"
    yield home
    shutil.rmtree(home, ignore_errors=True)  # the hook environment holds a torch install


@pytest.mark.slow
def test_hook_fails_on_the_bad_model_and_passes_the_good_one(tmp_path, pre_commit_home):
    hook_repo = tmp_path / "hook-repo"
    rev = _snapshot_of_checkout(hook_repo)

    project = tmp_path / "project"
    _git_init(project)
    (project / "bad_model.py").write_text(SaturatingStack.bad_example.lstrip())
    (project / "good_model.py").write_text(SaturatingStack.good_example.lstrip())
    (project / "train.py").write_text(PLAIN_SCRIPT)
    (project / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {hook_repo.as_posix()}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: archlint\n"
        "        args: [--select, AL101]\n")  # the rule the two models are written for
    _commit_all(project, "models")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRE_COMMIT", "VIRTUAL_ENV"))}
    env.update(PRE_COMMIT_HOME=str(pre_commit_home),
               PIP_CONSTRAINT=str(_constraints(tmp_path / "constraints.txt")),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    started = time.monotonic()
    everything = _pre_commit(project, env, "--all-files")
    first = time.monotonic() - started
    out = everything.stdout + everything.stderr
    assert everything.returncode == 1, out
    assert "archlint" in out and "Failed" in out, out
    assert "bad_model.py" in out and "AL101" in out, out
    assert "good_model.py:" not in out and "train.py:" not in out, out

    started = time.monotonic()
    good = _pre_commit(project, env, "--files", "good_model.py", "train.py")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout

    plain = _pre_commit(project, env, "--files", "train.py")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "Passed" in plain.stdout and "AL1" not in plain.stdout
    print(f"pre-commit: first run (hook environment install) {first:.1f}s, "
          f"two more runs {time.monotonic() - started:.1f}s")
