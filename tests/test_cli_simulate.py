"""`cellsynth simulate` end to end, in-process: outputs, JSON, errors and exit codes."""

import json
import re

import numpy as np
import pytest
import tifffile
from conftest import run, run_cellsynth

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.runtime import memory
from cellsynth_cli.simulate import dataset as lib
from cellsynth_cli.simulate.config import load_preset, replace

HELA_SMALL = ["--shape", "128,160", "--set", "radius=6,9", "--set", "n_cells=10,20"]


def test_simulate_writes_volumes_and_json(tmp_path):
    out = tmp_path / "sim"
    result = run("simulate", "hela", "-n", 2, "-o", out, "--seed", 3, "--json", *HELA_SMALL)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["name"] for v in report["volumes"]] == ["hela_0000", "hela_0001"]
    volumes = [io.read_volume(p) for p in io.list_volumes(out)]
    assert len(volumes) == 2
    for v in volumes:
        assert v.sketch.shape == (128, 160) and v.masks.shape == (128, 160)
        assert v.masks.max() == report["volumes"][int(v.name[-1])]["n_cells"]
        assert v.provenance["stage"] == "simulate" and v.provenance["preset"] == "hela"
        assert v.provenance["seed"] == 3


def test_same_seed_same_output_across_workers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("simulate", "hela", "-n", 2, "-o", a, "--seed", 5, *HELA_SMALL).exit_code == 0
    assert (
        run(
            "simulate", "hela", "-n", 2, "-o", b, "--seed", 5, "--workers", 2, *HELA_SMALL
        ).exit_code
        == 0
    )
    for pa, pb in zip(io.list_volumes(a), io.list_volumes(b), strict=True):
        va, vb = io.read_volume(pa), io.read_volume(pb)
        np.testing.assert_array_equal(va.masks, vb.masks)
        np.testing.assert_array_equal(va.sketch, vb.sketch)


def test_refuses_to_overwrite_and_touches_nothing(tmp_path):
    out = tmp_path / "sim"
    assert run("simulate", "hela", "-n", 1, "-o", out, "--seed", 1, *HELA_SMALL).exit_code == 0
    before = io.read_volume(io.list_volumes(out)[0]).masks
    result = run("simulate", "hela", "-n", 1, "-o", out, "--seed", 2, *HELA_SMALL)
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "Traceback" not in result.output
    np.testing.assert_array_equal(io.read_volume(io.list_volumes(out)[0]).masks, before)
    result = run("simulate", "hela", "-n", 1, "-o", out, "--seed", 2, "--overwrite", *HELA_SMALL)
    assert result.exit_code == 0
    assert not np.array_equal(io.read_volume(io.list_volumes(out)[0]).masks, before)


def test_preview_png(tmp_path):
    out = tmp_path / "sim"
    assert run("simulate", "hela", "-n", 1, "-o", out, "--preview", *HELA_SMALL).exit_code == 0
    png = out / "hela_0000_preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_celegans_3d_small(tmp_path):
    out = tmp_path / "sim"
    result = run(
        "simulate",
        "celegans",
        "-n",
        1,
        "-o",
        out,
        "--shape",
        "35,96,128",
        "--set",
        "radius=5,6",
        "--set",
        "n_cells=20,30",
    )
    assert result.exit_code == 0, result.output
    v = io.read_volume(io.list_volumes(out)[0])
    assert v.masks.shape == (35, 96, 128) and v.voxel_size == (1.0, 0.09, 0.09)


@pytest.mark.parametrize(
    "args,message",
    [
        (["simulate", "zebrafish", "-n", "1"], "valid presets"),
        (["simulate", "hela", "-n", "0"], "positive"),
        (["simulate", "hela", "-n", "-3"], "positive"),
        (["simulate", "hela", "-n", "1", "--shape", "10,x"], "--shape"),
        (["simulate", "hela", "-n", "1", "--shape", "5,10,10"], "2D"),
        (["simulate", "hela", "-n", "1", "--set", "radius"], "key=value"),
        (["simulate", "hela", "-n", "1", "--set", "colour=red"], "valid:"),
        (["simulate", "from-labels"], "--data"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = run(*args + ["-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_from_labels_means_match_real_image(tmp_path, dsb_dir):
    out = tmp_path / "sk"
    result = run("simulate", "from-labels", "--data", dsb_dir, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    sk = io.read_volume(io.list_volumes(out)[0])
    image = tifffile.imread(dsb_dir / "dsb2018.tif").astype(np.float64)
    masks = tifffile.imread(dsb_dir / "dsb2018_masks.tif")
    np.testing.assert_array_equal(sk.masks, masks)
    lo, hi = sk.provenance["intensity_low"], sk.provenance["intensity_high"]
    assert np.all(sk.sketch[masks == 0] == 0)
    for label in np.unique(masks)[1:40]:
        inside = masks == label
        expected = np.clip((image[inside] - lo) / (hi - lo), 0, 1).mean()
        assert sk.sketch[inside] == pytest.approx(expected, rel=1e-4)
    # brighter real nuclei -> brighter sketch cells
    labels = np.unique(masks)[1:]
    real_means = [image[masks == k].mean() for k in labels]
    sketch_means = [sk.sketch[masks == k][0] for k in labels]
    assert np.corrcoef(real_means, sketch_means)[0, 1] > 0.99


def test_from_labels_unreadable_input_named(tmp_path):
    data = tmp_path / "real"
    data.mkdir()
    (data / "broken.tif").write_bytes(b"not a tiff at all")
    result = run("simulate", "from-labels", "--data", data, "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert "broken.tif" in result.output and "Traceback" not in result.output


def test_resume_makes_the_same_set_as_one_run(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run("simulate", "hela", "-n", 3, "-o", whole, "--seed", 4, *HELA_SMALL).exit_code == 0
    assert run("simulate", "hela", "-n", 2, "-o", part, "--seed", 4, *HELA_SMALL).exit_code == 0
    kept = (part / "hela_0000.zarr" / "zarr.json").stat().st_mtime_ns
    result = run(
        "simulate", "hela", "-n", 3, "-o", part, "--seed", 4, "--resume", "--json", *HELA_SMALL
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["volumes"]
    assert [v.get("skipped", False) for v in report] == [True, True, False]
    assert (part / "hela_0000.zarr" / "zarr.json").stat().st_mtime_ns == kept  # not rewritten
    for a, b in zip(io.list_volumes(whole), io.list_volumes(part), strict=True):
        np.testing.assert_array_equal(io.read_volume(a).masks, io.read_volume(b).masks)
        np.testing.assert_array_equal(io.read_volume(a).sketch, io.read_volume(b).sketch)


@pytest.mark.parametrize("change", [["--seed", "5"], ["--set", "radius=7,9"]])
def test_resume_refuses_a_set_made_with_other_settings(tmp_path, change):
    out = tmp_path / "sim"
    assert run("simulate", "hela", "-n", 1, "-o", out, "--seed", 4, *HELA_SMALL).exit_code == 0
    result = run(
        "simulate", "hela", "-n", 2, "-o", out, "--seed", 4, *HELA_SMALL, *change, "--resume"
    )
    assert result.exit_code == 2 and "--resume" in result.output, result.output
    assert [p.name for p in io.list_volumes(out)] == ["hela_0000.zarr"]


def test_from_labels_resume(tmp_path, dsb_dir):
    out = tmp_path / "sk"
    assert run("simulate", "from-labels", "--data", dsb_dir, "-o", out).exit_code == 0
    result = run("simulate", "from-labels", "--data", dsb_dir, "-o", out, "--resume", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["volumes"][0]["skipped"]


def test_a_volume_larger_than_memory_is_one_line_before_any_work(tmp_path):
    """The real `cellsynth`: a clear refusal with the figures, not "unexpected MemoryError"."""
    out = tmp_path / "sim"
    result = run_cellsynth("simulate", "hela", "-n", 1, "--shape", "200000,200000", "-o", out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    # 200000^2 voxels x 17 bytes (masks, sketch, foreground and its index)
    assert re.fullmatch(
        r"error: --shape 200000,200000 needs about 633 GiB of memory for one volume; "
        r"this machine has [\d.]+ [KMGT]iB available: use a smaller --shape",
        lines[0],
    ), lines[0]
    assert not out.exists()


def test_memory_check_counts_the_volumes_simulated_at_once(tmp_path, monkeypatch):
    config = replace(load_preset("hela"), {"shape": [3000, 3000]}, source="test")
    assert lib.volume_bytes(config) == 17 * 3000 * 3000  # 146 MiB
    monkeypatch.setattr(memory, "available_bytes", lambda: 200 * 2**20)
    lib.check_memory(config, at_once=1)  # fits
    with pytest.raises(InputError, match=r"146 MiB .* one volume, 292 MiB for the 2 simulated"):
        lib.check_memory(config, at_once=2)
    with pytest.raises(InputError, match="fewer local workers"):
        lib.simulate_dataset(config, 3, tmp_path / "sim", cluster="local:2")
    assert not (tmp_path / "sim").exists()  # refused before a Dask cluster or a volume
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    lib.check_memory(config, at_once=8)  # free memory unknown: not refused


def test_available_memory_and_its_wording():
    available = memory.available_bytes()
    assert available is not None and available > 2**20  # Linux: MemAvailable
    assert memory.format_bytes(1536) == "1.5 KiB"
    assert memory.format_bytes(17 * 200_000**2) == "633 GiB"
    assert memory.format_bytes(2.5 * 2**40) == "2.5 TiB"


def test_fit_and_from_labels_are_subcommands_with_their_own_help():
    """`simulate fit --help` is fit's help (not simulate's); `simulate hela --help` the preset's;
    the group's help lists both subcommands and says how a preset is named."""
    fit_help = run_cellsynth("simulate", "fit", "--help")
    assert fit_help.returncode == 0 and "--spread" in fit_help.stdout
    options = re.findall(r"^\s*│\s+(-[-\w]+)", fit_help.stdout, re.M)
    assert "--data" in options and "--shape" not in options and "-n" not in options
    labels_help = run("simulate", "from-labels", "--help")
    assert labels_help.exit_code == 0 and "--spread" not in labels_help.output
    preset_help = run("simulate", "hela", "--help")
    assert "simulate [OPTIONS] {PRESET}" in preset_help.output and "--shape" in preset_help.output
    group_help = run("simulate", "--help")
    assert "from-labels" in group_help.output and "fit" in group_help.output
    assert "PRESET" in group_help.output


def test_options_before_the_preset_and_a_sibling_option_named(tmp_path):
    result = run("simulate", "-n", 1, "hela", "-o", tmp_path / "s", *HELA_SMALL)
    assert result.exit_code == 0, result.output
    misplaced = run("simulate", "from-labels", "--shape", "5,5")
    assert misplaced.exit_code == 2 and "--shape is for `simulate PRESET`" in misplaced.output
