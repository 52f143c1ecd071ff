"""The test environment runs every test: set-up installs every optional extra, and under CI a
skipped test fails the run instead of passing quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def _declared_extras() -> set[str]:
    """The extras in pyproject.toml's [project.optional-dependencies] table."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", table, flags=re.M))


def test_setup_installs_every_declared_extra():
    script = (ROOT / "scripts" / "setup_env.sh").read_text(encoding="utf-8")
    found = re.search(r"NMT_EXTRAS=\$\{NMT_EXTRAS:-([^}]*)\}", script)
    assert found, "scripts/setup_env.sh no longer sets NMT_EXTRAS"
    assert set(found.group(1).split(",")) == _declared_extras() >= {"test", "plot",
                                                                      "tensorboard", "serve",
                                                                      "ct2"}


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("ci, code, needle", [("true", 1, "skipped under CI=true"),
                                              ("", 0, "1 skipped")])
def test_a_skip_fails_under_ci_and_only_there(tmp_path, ci, code, needle):
    (tmp_path / "test_gap.py").write_text(
        "import pytest\n\ndef test_gap():\n    pytest.skip('an extra is missing')\n")
    env = dict(os.environ, CI=ci, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p",
                           "no:cacheprovider", "test_gap.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert needle in proc.stdout
