"""Usage errors through the real `cellsynth` executable: Click's usage message, exit 2.

Each command is driven as a user types it: an unknown option, a value of the wrong type, a
missing argument or option value, and unknown (sub)commands with "did you mean" hints.
"""

import pytest
from conftest import run_cellsynth

# (command words, arguments that make a wrong-type value, what the error names)
WRONG_TYPE = {
    "simulate": (["simulate", "hela", "-n", "abc"], "'-n'"),
    "train": (["train", "--steps", "abc"], "'--steps'"),
    "synthesize": (["synthesize", "--t-start", "abc"], "'--t-start'"),
    "noise-analysis": (["noise-analysis", "--bins", "abc"], "'--bins'"),
    "evaluate": (["evaluate", "--seed", "abc"], "'--seed'"),
    "segment train": (["segment", "train", "--epochs", "abc"], "'--epochs'"),
    "segment qc": (["segment", "qc", "--max-phantom", "abc"], "'--max-phantom'"),
}
# (command words, arguments missing something required, what the error says)
MISSING = {
    "simulate": (["simulate"], "Missing argument 'PRESET'"),
    "export": (["export"], "Missing argument 'DIR'"),
    "train": (["train", "--data"], "Option '--data' requires an argument"),
    "synthesize": (["synthesize", "--model"], "Option '--model' requires an argument"),
    "noise-analysis": (["noise-analysis", "--images"], "Option '--images' requires an argument"),
    "evaluate": (["evaluate", "--pred"], "Option '--pred' requires an argument"),
    "segment train": (["segment", "train", "--data"], "Option '--data' requires an argument"),
    "segment predict": (["segment", "predict", "--model"], "requires an argument"),
    "segment score": (["segment", "score", "--ref"], "Option '--ref' requires an argument"),
    "segment qc": (["segment", "qc", "--data"], "Option '--data' requires an argument"),
}
COMMANDS = sorted(set(WRONG_TYPE) | set(MISSING))


def assert_usage_error(result, command: str, message: str) -> None:
    err = result.stderr
    prefix = f"cellsynth {command}".strip()
    assert result.returncode == 2, (result.returncode, err)
    assert f"Usage: {prefix} [OPTIONS]" in err, err
    assert f"Try '{prefix} --help' for help." in err, err
    assert message in err, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option(command, tmp_path):
    result = run_cellsynth(*command.split(), "--bogus", cwd=tmp_path)
    assert_usage_error(result, command, "No such option: --bogus")
    assert not any(tmp_path.iterdir()), "a usage error must not write anything"


@pytest.mark.parametrize("command", sorted(WRONG_TYPE))
def test_value_of_the_wrong_type(command, tmp_path):
    args, option = WRONG_TYPE[command]
    result = run_cellsynth(*args, cwd=tmp_path)
    assert_usage_error(result, command, f"Invalid value for {option}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", sorted(MISSING))
def test_missing_argument_or_value(command, tmp_path):
    args, message = MISSING[command]
    result = run_cellsynth(*args, cwd=tmp_path)
    assert_usage_error(result, command, message)


def test_near_miss_option_is_suggested(tmp_path):
    result = run_cellsynth("train", "--dat", "real/", cwd=tmp_path)
    assert_usage_error(result, "train", "No such option: --dat")
    assert "--data" in result.stderr  # Click lists the close matches


@pytest.mark.parametrize(
    "args,command,message",
    [
        (["nosuchcmd"], "", "No such command 'nosuchcmd'."),
        (["simulat"], "", "Did you mean 'simulate'?"),
        (["segment", "trian"], "segment", "Did you mean 'train'?"),
    ],
)
def test_unknown_command(args, command, message, tmp_path):
    result = run_cellsynth(*args, cwd=tmp_path)
    assert_usage_error(result, command, message)


def test_bad_input_is_still_one_line_exit_2(tmp_path):
    # not a usage error: a value Click accepts but the library refuses
    result = run_cellsynth("simulate", "zebrafish", "-n", "1", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "valid presets" in lines[-1]
    assert "Traceback" not in result.stderr


def test_the_cli_starts_without_numpy_torch_or_zarr():
    """`cellsynth --help` and usage errors stay fast: the heavy libraries load in commands."""
    import subprocess
    import sys

    probe = (
        "import sys, cellsynth_cli.cli; "
        "print(sorted({'numpy', 'torch', 'zarr'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
