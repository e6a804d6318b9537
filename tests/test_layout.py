"""The import rule of docs/contributing.md, checked: a package imports only from its own layer
(itself) or the layers below it, so nothing imports upward."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cellsynth_cli"
# higher numbers may import lower ones; a package may import itself
LAYERS = {
    "cli": 6,
    "pipeline": 5,
    "segment": 4,
    "ddpm": 4,
    "simulate": 3,
    "measure": 2,
    "diffusion": 2,
    "runtime": 2,
    "io": 1,
    "errors": 0,
    "workdir": 0,
    "defaults": 0,
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cellsynth_cli"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[1] for a in node.names if a.name.startswith("cellsynth_cli.")
            }
    return found & set(LAYERS)


def test_every_package_has_a_layer():
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    top |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert top - {"models", "presets"} <= set(LAYERS), top - set(LAYERS)


def test_nothing_imports_upward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for other in imported_packages(path):
            if other != own and LAYERS[other] >= LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not upward, upward
