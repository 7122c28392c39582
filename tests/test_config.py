"""Settling a RunConfig: flags > environment > .env > mpinfer.toml > defaults; errors say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpinfer.config import BackendKind, RunConfig, Transport, load_config
from mpinfer.errors import ConfigError

SECRET = "sk-test-secret-do-not-print-7f3a9c"


def write_env_file(folder: Path, text: str) -> None:
    (folder / ".env").write_text(text, encoding="utf-8")


def write_toml(folder: Path, text: str) -> None:
    (folder / "mpinfer.toml").write_text(text, encoding="utf-8")


# --- precedence, one level at a time --------------------------------------------------------------


def test_defaults_apply_when_nothing_is_set(tmp_path: Path) -> None:
    # Given an empty folder and an empty environment
    # When the config is settled without flags
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then every field has its documented default
    assert config.processes == 4
    assert config.concurrency == 1
    assert config.model == "gpt-4o-mini"
    assert config.timeout == 120.0
    assert config.max_retries == 3
    assert config.retry_backoff == 1.0
    assert config.log_dir == Path("logs")
    assert config.input is None and config.output is None and config.base_url is None
    assert config.api_key is None
    assert config.verbose is False


def test_toml_value_wins_over_the_default(tmp_path: Path) -> None:
    # Given mpinfer.toml setting processes, with nothing else set
    write_toml(tmp_path, "processes = 3\nmodel = \"gpt-4o\"\n")
    # When the config is settled
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then the file's values replace the defaults
    assert config.processes == 3
    assert config.model == "gpt-4o"


def test_dotenv_value_wins_over_the_toml_file(tmp_path: Path) -> None:
    # Given processes set both in mpinfer.toml and in .env
    write_toml(tmp_path, "processes = 3\n")
    write_env_file(tmp_path, "MPINFER_PROCESSES=5\n")
    # When the config is settled with an empty process environment
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then .env wins
    assert config.processes == 5


def test_environment_variable_wins_over_the_dotenv_file(tmp_path: Path) -> None:
    # Given processes set in .env and in the process environment
    write_toml(tmp_path, "processes = 3\n")
    write_env_file(tmp_path, "MPINFER_PROCESSES=5\n")
    # When the config is settled
    config = load_config({}, environ={"MPINFER_PROCESSES": "6"}, cwd=tmp_path)
    # Then the real environment variable wins
    assert config.processes == 6


def test_flag_wins_over_the_environment(tmp_path: Path) -> None:
    # Given processes set at every level below the flags
    write_toml(tmp_path, "processes = 3\n")
    write_env_file(tmp_path, "MPINFER_PROCESSES=5\n")
    # When a flag also sets it
    config = load_config({"processes": 8}, environ={"MPINFER_PROCESSES": "6"}, cwd=tmp_path)
    # Then the flag wins
    assert config.processes == 8


def test_each_level_wins_over_the_next_for_different_settings_at_once(tmp_path: Path) -> None:
    # Given five settings each set down to a different level
    write_toml(tmp_path, "processes = 3\nconcurrency = 3\nmodel = \"toml-model\"\ntimeout = 33.0\n")
    write_env_file(tmp_path,
                   "MPINFER_PROCESSES=5\nMPINFER_CONCURRENCY=5\nMPINFER_MODEL=dotenv-model\n")
    environ = {"MPINFER_PROCESSES": "6", "MPINFER_CONCURRENCY": "6"}
    # When the config is settled with one flag
    config = load_config({"processes": 8, "concurrency": None}, environ=environ, cwd=tmp_path)
    # Then each setting comes from the highest level that sets it (None flags count as not given)
    assert ((config.processes, config.concurrency, config.model, config.timeout, config.max_retries)
            == (8, 6, "dotenv-model", 33.0, 3))


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    # Given the model in mpinfer.toml and an empty MPINFER_MODEL in the environment
    write_toml(tmp_path, "model = \"gpt-4o\"\n")
    # When the config is settled
    config = load_config({}, environ={"MPINFER_MODEL": ""}, cwd=tmp_path)
    # Then the empty variable does not hide the file's value
    assert config.model == "gpt-4o"


def test_openai_base_url_sets_the_base_url(tmp_path: Path) -> None:
    # Given the SDK's own variable for the base URL
    environ = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    # When the config is settled
    config = load_config({}, environ=environ, cwd=tmp_path)
    # Then it is used
    assert config.base_url == "http://127.0.0.1:9/v1"


def test_base_url_in_the_environment_wins_over_the_other_base_url_name_in_dotenv(
    tmp_path: Path,
) -> None:
    # Given OPENAI_BASE_URL in .env and MPINFER_BASE_URL in the real environment
    write_env_file(tmp_path, "OPENAI_BASE_URL=http://from-dotenv.invalid/v1\n")
    environ = {"MPINFER_BASE_URL": "http://from-environment.invalid/v1"}
    # When the config is settled
    config = load_config({}, environ=environ, cwd=tmp_path)
    # Then the real environment wins, as it does for every other setting
    assert config.base_url == "http://from-environment.invalid/v1"


def test_toml_keys_may_use_dashes(tmp_path: Path) -> None:
    # Given mpinfer.toml spelling a setting with dashes, as the flag does
    write_toml(tmp_path, "max-retries = 7\n")
    # When the config is settled
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then the setting is applied
    assert config.max_retries == 7


def test_extra_body_from_environment_is_parsed_as_a_json_object(tmp_path: Path) -> None:
    # Given a JSON object in MPINFER_EXTRA_BODY
    environ = {"MPINFER_EXTRA_BODY": '{"top_p": 0.5, "seed": 3}'}
    # When the config is settled
    config = load_config({}, environ=environ, cwd=tmp_path)
    # Then it is a dict
    assert config.extra_body == {"top_p": 0.5, "seed": 3}


def test_paths_are_paths_and_expand_the_home_folder(tmp_path: Path) -> None:
    # Given input and output given as text, one with ~
    flags = {"input": "~/tasks.jsonl", "output": "out/results.jsonl"}
    # When the config is settled
    config = load_config(flags, environ={}, cwd=tmp_path)
    # Then they are Paths, with ~ expanded
    assert config.input == Path.home() / "tasks.jsonl"
    assert config.output == Path("out/results.jsonl")


# --- invalid values name their source -------------------------------------------------------------


def test_invalid_environment_value_names_the_variable(tmp_path: Path) -> None:
    # Given a non-number in MPINFER_PROCESSES
    environ = {"MPINFER_PROCESSES": "abc"}
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ=environ, cwd=tmp_path)
    # Then the error names the variable and the bad value
    assert "MPINFER_PROCESSES" in str(caught.value)
    assert "'abc'" in str(caught.value)


def test_invalid_toml_value_names_the_toml_file(tmp_path: Path) -> None:
    # Given a zero process count in mpinfer.toml
    write_toml(tmp_path, "processes = 0\n")
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    # Then the error names the file and the setting
    message = str(caught.value)
    assert str(tmp_path / "mpinfer.toml") in message
    assert "processes" in message and "1 or more" in message


def test_invalid_flag_value_names_the_flag(tmp_path: Path) -> None:
    # Given a negative timeout on the command line
    flags = {"timeout": "-1"}
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ={}, cwd=tmp_path)
    # Then the error names the flag
    assert str(caught.value).startswith("--timeout:")


def test_extra_body_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    # Given a JSON array as the extra body
    environ = {"MPINFER_EXTRA_BODY": "[1, 2]"}
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ=environ, cwd=tmp_path)
    # Then the error names the variable and says what is wrong
    assert "MPINFER_EXTRA_BODY" in str(caught.value)
    assert "JSON object" in str(caught.value)


def test_invalid_dotenv_value_names_the_variable(tmp_path: Path) -> None:
    # Given a broken JSON value for extra_body in .env
    write_env_file(tmp_path, "MPINFER_EXTRA_BODY={not json\n")
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    # Then the error names the variable
    assert "MPINFER_EXTRA_BODY" in str(caught.value)


def test_unknown_key_in_toml_is_an_error(tmp_path: Path) -> None:
    # Given a misspelt setting in mpinfer.toml
    write_toml(tmp_path, "procesess = 3\n")
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    # Then the error names the key, the file and the known settings
    message = str(caught.value)
    assert "'procesess'" in message
    assert str(tmp_path / "mpinfer.toml") in message
    assert "processes" in message


def test_unparsable_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    # Given a mpinfer.toml that is not TOML
    write_toml(tmp_path, "processes = = 3\n")
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    # Then the error names the file
    assert str(tmp_path / "mpinfer.toml") in str(caught.value)


@pytest.mark.parametrize("key", ["api_key", "api-key"])
def test_api_key_in_toml_is_refused(tmp_path: Path, key: str) -> None:
    # Given an API key written into mpinfer.toml
    write_toml(tmp_path, f"{key} = \"{SECRET}\"\n")
    # When the config is settled
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    # Then it is refused, pointing at OPENAI_API_KEY, and the key itself is not echoed
    message = str(caught.value)
    assert "api_key does not belong" in message
    assert "OPENAI_API_KEY" in message
    assert SECRET not in message


# --- the API key ----------------------------------------------------------------------------------


def test_api_key_comes_from_dotenv_and_the_environment_wins(tmp_path: Path) -> None:
    # Given a key in .env
    write_env_file(tmp_path, "OPENAI_API_KEY=sk-from-dotenv\n")
    # When the config is settled without and then with the variable in the environment
    from_file = load_config({}, environ={}, cwd=tmp_path)
    from_env = load_config({}, environ={"OPENAI_API_KEY": "sk-from-env"}, cwd=tmp_path)
    # Then .env provides it, and the real environment overrides it
    assert from_file.api_key == "sk-from-dotenv"
    assert from_env.api_key == "sk-from-env"


def test_api_key_never_appears_in_the_repr(tmp_path: Path) -> None:
    # Given a config holding a key
    config = load_config({}, environ={"OPENAI_API_KEY": SECRET}, cwd=tmp_path)
    # When it is shown
    shown = repr(config) + str(config)
    # Then the key is held but not shown
    assert config.api_key == SECRET
    assert config.require_api_key() == SECRET
    assert SECRET not in shown
    assert "api_keys=" not in shown


def test_require_api_key_says_where_to_set_it() -> None:
    # Given a config without a key
    config = RunConfig()
    # When the key is required
    with pytest.raises(ConfigError) as caught:
        config.require_api_key()
    # Then the message names the variable and .env
    assert "OPENAI_API_KEY" in str(caught.value)
    assert ".env" in str(caught.value)


def test_require_paths_without_input_says_where_to_set_it() -> None:
    # Given a config with an output but no input
    config = RunConfig(output=Path("out.jsonl"))
    # When the paths are required
    with pytest.raises(ConfigError) as caught:
        config.require_paths()
    # Then the message names the flag, the variable and the toml key
    message = str(caught.value)
    assert message.startswith("no input file")
    assert "-i FILE" in message and "MPINFER_INPUT" in message and "mpinfer.toml" in message


def test_require_paths_without_output_says_where_to_set_it() -> None:
    # Given a config with an input but no output
    config = RunConfig(input=Path("in.jsonl"))
    # When the paths are required
    with pytest.raises(ConfigError) as caught:
        config.require_paths()
    # Then the message names the flag, the variable and the toml key
    message = str(caught.value)
    assert message.startswith("no output file")
    assert "-o FILE" in message and "MPINFER_OUTPUT" in message and "mpinfer.toml" in message


def test_require_paths_returns_both_paths_when_set() -> None:
    # Given both paths
    config = RunConfig(input=Path("in.jsonl"), output=Path("out.jsonl"))
    # When they are required
    # Then they come back in order
    assert config.require_paths() == (Path("in.jsonl"), Path("out.jsonl"))


def test_image_root_defaults_to_the_input_folder(tmp_path: Path) -> None:
    # Given an input in a sub-folder and no image root
    config = RunConfig(input=tmp_path / "data" / "tasks.jsonl")
    # When the image root is resolved
    # Then it is the input's folder, and an explicit root wins
    assert config.resolved_image_root == tmp_path / "data"
    assert (RunConfig(input=tmp_path / "t.jsonl", image_root=tmp_path / "img").resolved_image_root
            == tmp_path / "img")


@pytest.mark.parametrize(
    "line", ["processes = 2.5", "processes = true", "max_tokens = 1.9", "temperature = true"])
def test_toml_value_of_the_wrong_type_is_refused_not_coerced(tmp_path: Path, line: str) -> None:
    # Given a TOML value of the wrong type (a fraction or a boolean where a count or a number is
    # meant)
    write_toml(tmp_path, line + "\n")
    # When the config is settled
    # Then it is refused, naming the file, rather than silently truncated or turned into 1
    with pytest.raises(ConfigError) as caught:
        load_config({}, environ={}, cwd=tmp_path)
    assert str(tmp_path / "mpinfer.toml") in str(caught.value)


def test_toml_verbose_written_as_the_string_false_is_off(tmp_path: Path) -> None:
    # Given verbose written as a string in mpinfer.toml
    write_toml(tmp_path, 'verbose = "false"\n')
    # When the config is settled
    # Then it reads as off, not as a non-empty (truthy) string
    assert load_config({}, environ={}, cwd=tmp_path).verbose is False


def test_toml_verbose_that_is_not_a_boolean_is_refused(tmp_path: Path) -> None:
    # Given verbose set to something that is not true or false
    write_toml(tmp_path, 'verbose = "maybe"\n')
    # When the config is settled
    # Then it is refused, naming the file
    with pytest.raises(ConfigError, match=r"mpinfer\.toml"):
        load_config({}, environ={}, cwd=tmp_path)


def test_toml_verbose_true_turns_verbose_on(tmp_path: Path) -> None:
    # Given verbose = true in mpinfer.toml
    write_toml(tmp_path, "verbose = true\n")
    # When the config is settled
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then verbose is on
    assert config.verbose is True


# --- choices are enums ----------------------------------------------------------------------------


def test_backend_and_transport_are_enums_parsed_in_any_case(tmp_path: Path) -> None:
    # Given the backend and the transport written in capitals, in the environment and in
    # mpinfer.toml
    write_toml(tmp_path, 'transport = "HTTPX"\n')
    # When the config is settled
    config = load_config({}, environ={"MPINFER_BACKEND": "Ray"}, cwd=tmp_path)
    # Then both are the enums' members
    assert config.backend is BackendKind.RAY
    assert config.transport is Transport.HTTPX
    # And the defaults are members too
    assert RunConfig().backend is BackendKind.LOCAL and RunConfig().transport is Transport.AIOHTTP


def test_an_unknown_backend_is_refused_naming_the_choices(tmp_path: Path) -> None:
    # Given a backend that does not exist
    flags = {"backend": "k8s"}
    # When the config is settled
    # Then the error names the flag and the choices
    said = r"^--backend: backend = 'k8s' is invalid: must be local or ray or batch$"
    with pytest.raises(ConfigError, match=said):
        load_config(flags, environ={}, cwd=tmp_path)


def test_verbose_can_be_set_in_the_environment(tmp_path: Path) -> None:
    # Given MPINFER_VERBOSE=1, like every other setting's variable
    # When the config is settled
    config = load_config({}, environ={"MPINFER_VERBOSE": "1"}, cwd=tmp_path)
    # Then verbose is on
    assert config.verbose is True
