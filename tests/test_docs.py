"""The documentation site builds with --strict (as `make docs`): a broken link fails, and the
CLI reference is generated from the app, so every command is in it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build(project: Path, site: Path) -> subprocess.CompletedProcess:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    return subprocess.run(
        [
            str(mkdocs),
            "build",
            "--strict",
            "-f",
            str(project / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture
def project_copy(tmp_path):
    """mkdocs.yml + docs/ in a scratch folder, so a test can break a link without harm."""
    where = tmp_path / "project"
    where.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", where / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", where / "docs")
    return where


def test_the_site_builds_and_its_cli_reference_has_every_command(project_copy, tmp_path):
    result = build(project_copy, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    reference = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in ("simulate PRESET", "simulate fit", "train", "synthesize", "pipeline"):
        assert f"cellsynth {command}" in reference, command
    assert "simulate preset" not in reference  # the hidden command is shown as typed
    assert "--t-start" in reference and "--guidance" in reference


def test_a_broken_link_fails_the_build(project_copy, tmp_path):
    page = project_copy / "docs" / "models.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    result = build(project_copy, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr
