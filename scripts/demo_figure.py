"""Side-by-side figure for the demo and README: sketch | synthetic | real (first volumes)."""

from __future__ import annotations

import sys
from pathlib import Path

from cellsynth_cli import io
from cellsynth_cli.preview import save_panels


def main(synth_dir: str, real_dir: str, out: str) -> None:
    real = next(io.read_volumes(Path(real_dir)))
    rows = []
    for volume in list(io.read_volumes(Path(synth_dir)))[:3]:
        rows.append((f"sketch {volume.name}", volume.sketch, False))
        rows.append(("synthetic", volume.image, False))
    h, w = rows[0][1].shape
    rows.append(("real (crop)", real.image[:h, :w], False))
    save_panels(Path(out), rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
