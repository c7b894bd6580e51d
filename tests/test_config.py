"""Config precedence, strict validation, and `agentd --check-config`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.config import load_config
from agentd.errors import ConfigError
from tests.conftest import clean_environ


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_no_environment() -> None:
    config = load_config({})
    assert config.profile == "development"
    assert config.gemini.model == "gemini-flash-latest"
    assert config.sources["daemon.max_frame_bytes"] == "default"


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    file = write(
        tmp_path / "a.toml",
        '[daemon]\nshutdown_grace_s = 7\nidle_timeout_s = 9\n[log]\nlevel = "WARNING"\n',
    )
    environ = {
        "AGENTD_ENV": "production",
        "AGENTD_CONFIG": str(file),
        "AGENTD_DAEMON__IDLE_TIMEOUT_S": "11",
    }
    config = load_config(environ, flags={"log.level": "ERROR"})
    assert config.profile == "production"
    assert config.daemon.shutdown_grace_s == 7.0
    assert config.sources["daemon.shutdown_grace_s"] == str(file)
    assert config.daemon.idle_timeout_s == 11.0
    assert config.sources["daemon.idle_timeout_s"] == "environment AGENTD_DAEMON__IDLE_TIMEOUT_S"
    assert config.log.level == "ERROR"
    assert config.sources["log.level"] == "flag"


def test_documented_environment_names_map_to_keys() -> None:
    config = load_config(
        {
            "AGENTD_SOCKET": "/x.sock",
            "AGENTD_GEMINI_MODEL": "m",
            "AGENTD_GEMINI_BASE_URL": "http://h",
        }
    )
    assert config.daemon.socket_path == "/x.sock"
    assert config.gemini.model == "m"
    assert config.gemini.base_url == "http://h"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "a.toml", "[daemon]\nsockt_path = '/x'\n")
    with pytest.raises(ConfigError, match=r"a\.toml.*daemon\.sockt_path"):
        load_config({"AGENTD_CONFIG": str(file)})


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "a.toml", "[deamon]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[deamon\]"):
        load_config({"AGENTD_CONFIG": str(file)})


def test_wrong_type_names_the_key_and_what_it_wanted(tmp_path: Path) -> None:
    file = write(tmp_path / "a.toml", '[daemon]\nmax_connections = "many"\n')
    with pytest.raises(ConfigError, match=r"daemon\.max_connections must be int"):
        load_config({"AGENTD_CONFIG": str(file)})


def test_bad_environment_value_names_its_origin() -> None:
    with pytest.raises(
        ConfigError, match=r"environment AGENTD_DAEMON__MAX_FRAME_BYTES: daemon\.max_frame_bytes"
    ):
        load_config({"AGENTD_DAEMON__MAX_FRAME_BYTES": "big"})


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ConfigError, match="AGENTD_ENV"):
        load_config({"AGENTD_ENV": "prod"})


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "a.toml", "[daemon\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config({"AGENTD_CONFIG": str(file)})


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, config_path=str(tmp_path / "nope.toml"))


def test_example_config_in_etc_is_valid_and_complete() -> None:
    example = Path(__file__).resolve().parent.parent / "etc" / "agentd.toml"
    config = load_config({}, config_path=str(example))
    documented = {k for k, v in config.sources.items() if v == str(example)}
    assert documented == set(config.sources), sorted(set(config.sources) - documented)


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", "--check-config"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_check_config_prints_values_and_sources_and_exits_0(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    env["GEMINI_API_KEY"] = "AIza-secret-marker-123"
    env["AGENTD_DAEMON__SHUTDOWN_GRACE_S"] = "3"
    result = check_config(env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "shutdown_grace_s = 3.0  # environment" in out
    assert "configured (redacted)" in out
    assert "secret-marker" not in out


def test_check_config_with_a_bad_file_exits_78(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    write(Path(env["AGENTD_CONFIG"]), "[daemon]\nnope = 1\n")
    result = check_config(env)
    assert result.returncode == 78
    assert "daemon.nope" in result.stderr.decode()


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    env["AGENTD_LIMITS__CHAT_RATE"] = "fast"
    result = check_config(env)
    assert result.returncode == 78
    assert result.stderr.decode().splitlines() == [
        "agentd: environment AGENTD_LIMITS__CHAT_RATE: limits.chat_rate must be float, got 'fast'"
    ]


def test_an_unknown_key_suggests_the_nearest_known_one(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    write(Path(env["AGENTD_CONFIG"]), "[limits]\nchat_rat = 1.0\n")
    result = check_config(env)
    assert result.returncode == 78
    assert "unknown key 'limits.chat_rat'; did you mean 'limits.chat_rate'?" in (
        result.stderr.decode()
    )
    with pytest.raises(ConfigError, match=r"AGENTD_LIMIT__CHAT_RATE: .*did you mean 'limits.chat"):
        load_config({"AGENTD_LIMIT__CHAT_RATE": "1"})
    write(Path(env["AGENTD_CONFIG"]), "[limit]\nchat_rate = 1.0\n")
    assert "unknown section [limit]; did you mean 'limits'?" in check_config(env).stderr.decode()


def test_check_config_has_one_comment_per_line_and_no_empty_string_for_unset(
    tmp_path: Path,
) -> None:
    env = clean_environ(tmp_path)
    result = check_config(env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line for line in lines if line.count("  # ") > 1] == []
    assert "# temperature is unset (default)" in lines  # gemini.temperature: a float, unset
    assert not [line for line in lines if line.startswith("temperature")]


def test_check_config_says_where_the_profile_came_from(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    assert "# profile: development (default; AGENTD_ENV is not set)" in (
        check_config(env).stdout.decode().splitlines()
    )
    env["AGENTD_ENV"] = "staging"
    assert "# profile: staging (AGENTD_ENV)" in check_config(env).stdout.decode().splitlines()


def test_an_audit_level_outside_none_and_metadata_is_refused(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    env["AGENTD_AUDIT__PROBE"] = "verbose"
    result = check_config(env)
    assert result.returncode == 78
    assert result.stderr.decode().splitlines() == [
        "agentd: environment AGENTD_AUDIT__PROBE: audit.probe must be one of none, metadata, "
        "got 'verbose'"
    ]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("AGENTD_AUDIT__RETENTION_DAYS", "-1", "audit.retention_days must not be negative"),
        ("AGENTD_DAEMON__SHUTDOWN_GRACE_S", "-1", "daemon.shutdown_grace_s must not be negative"),
    ],
)
def test_a_declared_constraint_names_the_key(key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config({key: value})
