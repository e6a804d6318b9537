"""mkdocs hook: the CLI reference page is Typer's own documentation of the app, made at
build time (`typer MODULE utils docs`), so it cannot drift from `cellsynth --help`."""

from __future__ import annotations

import re
import subprocess
import sys

MARKER = "<!-- cli-reference -->"


def typer_docs() -> str:
    command = [sys.executable, "-m", "typer", "cellsynth_cli.cli", "utils", "docs"]
    text = subprocess.run(
        [*command, "--name", "cellsynth"], capture_output=True, text=True, check=True
    ).stdout
    # the hidden preset command is typed without its name: `cellsynth simulate PRESET`
    for typed, shown in (
        ("cellsynth simulate preset [OPTIONS] {PRESET}", "cellsynth simulate [OPTIONS] PRESET"),
        ("`cellsynth simulate preset`", "`cellsynth simulate PRESET`"),
        ("* `preset`: ", "* `PRESET`: "),
    ):
        text = text.replace(typed, shown)
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)  # under the page's own title


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return markdown.replace(MARKER, typer_docs()) if MARKER in markdown else markdown
