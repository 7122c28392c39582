"""--config FILE (or MPINFER_CONFIG) names the settings file to read instead of ./mpinfer.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpinfer.config import load_config
from mpinfer.errors import ConfigError


def test_config_names_another_settings_file_in_place_of_mpinfer_toml(tmp_path: Path):
    # Given a mpinfer.toml and a second settings file for another job
    (tmp_path / "mpinfer.toml").write_text('model = "from-default"\nprocesses = 3\n')
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "b.toml").write_text('model = "from-b"\n')
    # When the settings are read with --config, with MPINFER_CONFIG, and with neither
    named = load_config({}, environ={}, cwd=tmp_path, config_file=Path("jobs/b.toml"))
    by_env = load_config({}, environ={"MPINFER_CONFIG": str(tmp_path / "jobs" / "b.toml")},
                         cwd=tmp_path)
    default = load_config({}, environ={}, cwd=tmp_path)
    # Then the named file replaces mpinfer.toml (nothing of it is read), and flags still win over it
    assert (named.model, named.processes) == ("from-b", 4)
    assert by_env.model == "from-b"
    assert (default.model, default.processes) == ("from-default", 3)
    assert load_config({"model": "flag"}, environ={}, cwd=tmp_path,
                       config_file=Path("jobs/b.toml")).model == "flag"


def test_a_settings_file_named_on_purpose_must_exist(tmp_path: Path):
    # Given no such file
    # When it is named with --config or MPINFER_CONFIG
    # Then the settings are refused, naming it, rather than a job run on the defaults
    with pytest.raises(ConfigError, match=r"--config nope\.toml: no such settings file"):
        load_config({}, environ={}, cwd=tmp_path, config_file=Path("nope.toml"))
    with pytest.raises(ConfigError, match=r"MPINFER_CONFIG nope\.toml: no such settings file"):
        load_config({}, environ={"MPINFER_CONFIG": "nope.toml"}, cwd=tmp_path)
