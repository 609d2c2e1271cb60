"""Bad command-line values are refused while parsing (exit code 2), naming the flag and the value, before
anything loads: NaN / inf / negative / zero numbers, an empty prompt, an output file that cannot be written.
Every case points the command at paths that do not exist, so a value that got through would fail later
with a different error (and exit code 1) instead."""

from __future__ import annotations

import pytest

from pi0edge.cli import main

MISSING = "/nonexistent-pi0edge/thing"
RUN = ["run", "--config", MISSING, "--bundle", MISSING, "--prompt", "pick up the cube"]
PROFILE = ["profile", MISSING]

BAD_VALUES = [
    (["demo"], "--duration-s", "nan"),
    (["demo"], "--duration-s", "inf"),
    (["demo"], "--duration-s", "-1"),
    (["demo"], "--duration-s", "0"),
    (RUN, "--duration-s", "nan"),
    (RUN, "--duration-s", "-inf"),
    (RUN, "--duration-s", "0"),
    (["replay", MISSING], "--speed", "0"),
    (["replay", MISSING], "--speed", "-2"),
    (["replay", MISSING], "--speed", "nan"),
    (PROFILE, "--threads", "0"),
    (PROFILE, "--threads", "-4"),
    (PROFILE, "--iters", "0"),
    (PROFILE, "--warmup", "-1"),
    (PROFILE, "--num-steps", "0"),
    (PROFILE, "--num-steps", "2.5"),
    (["export", MISSING, "-o", MISSING], "--num-steps", "-3"),
    (["build", MISSING], "--max-batch", "0"),
    (["build", MISSING], "--workspace-gb", "nan"),
    (["quantize", MISSING, "-o", MISSING, "--mode", "int8"], "--calib-chunks", "0"),
    (["calibrate", "intrinsics", "--images", MISSING, "--board", MISSING, "--out", MISSING], "--timeout-s", "inf"),
    (["calibrate", "intrinsics", "--images", MISSING, "--board", MISSING, "--out", MISSING], "--min-views", "0"),
    (["calibrate", "check", "--reference", MISSING, "--image", MISSING], "--max-mm", "-1"),
    (["serve", MISSING, "--ray"], "--replicas", "0"),
    (["serve", MISSING, "--ray"], "--gpus-per-replica", "-0.5"),
    (["serve", MISSING, "--ray"], "--gpus-per-replica", "nan"),
    (["serve", MISSING, "--ray"], "--cpus-per-replica", "0"),
]


@pytest.mark.parametrize("command, flag, value", BAD_VALUES, ids=[f"{c[0]} {f} {v}" for c, f, v in BAD_VALUES])
def test_bad_numbers_are_refused_by_argparse_naming_flag_and_value(capsys, command, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main([*command, f"{flag}={value}"])  # the = form: "-1" would read as an option
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and repr(value) in err


def test_zero_warmup_is_accepted_as_no_warmup(capsys):
    assert main([*PROFILE, "--warmup", "0"]) == 1  # parsed; then the missing bundle is the error
    assert "--warmup" not in capsys.readouterr().err


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n"])
def test_empty_or_blank_prompt_is_refused_before_the_config_loads(capsys, prompt):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--config", MISSING, "--bundle", MISSING, "--prompt", prompt])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --prompt" in err and "robot config" not in err


@pytest.mark.parametrize("flag", ["--json", "--trace"])
def test_profile_output_in_a_missing_folder_is_refused_before_profiling(capsys, tmp_path, flag):
    target = tmp_path / "no-such-folder" / "out.json"
    with pytest.raises(SystemExit) as exit_:
        main([*PROFILE, flag, str(target)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and str(target) in err and "does not exist" in err


def test_run_record_path_that_is_a_folder_or_under_a_file_is_refused(capsys, tmp_path):
    for bad in (tmp_path, tmp_path / "a-file" / "run.episode"):
        (tmp_path / "a-file").write_text("")
        with pytest.raises(SystemExit) as exit_:
            main([*RUN, "--record", str(bad)])
        assert exit_.value.code == 2
        assert "argument --record" in capsys.readouterr().err


def test_writable_record_path_passes_parsing(capsys, tmp_path):
    # Parsed, then the missing robot YAML is the error: the --record check let it through.
    assert main([*RUN, "--record", str(tmp_path / "run.episode")]) == 1
    assert "robot config file does not exist" in capsys.readouterr().err
