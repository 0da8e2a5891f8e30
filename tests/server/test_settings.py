"""Settings: environment variables, CLI flags over them, and errors naming the setting."""

from __future__ import annotations

import pytest

from server.settings import SettingsError, load_settings


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("BACKTRACK_PORT", "9001")
    monkeypatch.setenv("BACKTRACK_API_KEY", "secret")
    monkeypatch.setenv("BACKTRACK_CORS_ORIGINS", '["http://a.example"]')
    settings = load_settings(["--port", "9002", "--checkpoint", "some/dir"])
    assert settings.port == 9002
    assert str(settings.checkpoint) == "some/dir"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "secret"
    assert settings.cors_origins == ["http://a.example"]
    assert "secret" not in repr(settings)


def test_defaults_are_safe():
    settings = load_settings([])
    assert settings.trust_remote_code is False
    assert settings.api_key is None
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--port", "http"], {}, "port"),
        ([], {"BACKTRACK_MAX_QUEUE_SIZE": "-1"}, "max_queue_size"),
        ([], {"BACKTRACK_DTYPE": "float8"}, "dtype"),
        (["--request-timeout", "0"], {}, "request_timeout"),
        (["--no-such-flag", "1"], {}, "no-such-flag"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch, argv, env, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings(argv)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_refused_not_taken_for_protection(monkeypatch, key):
    monkeypatch.setenv("BACKTRACK_API_KEY", key)
    with pytest.raises(SettingsError, match="api_key"):
        load_settings([])


@pytest.mark.parametrize(
    ("host", "key", "exposed"),
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("example.org", None, True),
        ("0.0.0.0", "secret", False),
    ],
)
def test_exposed_without_key(monkeypatch, host, key, exposed):
    if key:
        monkeypatch.setenv("BACKTRACK_API_KEY", key)
    assert load_settings(["--host", host]).exposed_without_key is exposed


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("max_stop_sequences", "-1"),
        ("max_stop_sequence_chars", "0"),
        ("max_backtracks", "-1"),
        ("max_backtrack_depth", "0"),
        ("max_input_chars", "0"),
        ("max_request_bytes", "0"),
        ("health_stall_timeout", "0"),
    ],
)
def test_bad_limits_name_the_setting(monkeypatch, name, bad):
    monkeypatch.setenv(f"BACKTRACK_{name.upper()}", bad)
    with pytest.raises(SettingsError, match=name):
        load_settings([])


def test_a_key_written_with_echo_loses_its_newline(monkeypatch):
    """A Secret made from `echo key > file` ends in a newline no client sends."""
    monkeypatch.setenv("BACKTRACK_API_KEY", "secret\n")
    settings = load_settings([])
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "secret"


def test_the_key_can_come_from_a_file_stripped(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("  from-a-file\n")
    settings = load_settings(["--api-key-file", str(key_file)])
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_or_empty_key_file_stops_start_up_naming_it(tmp_path, content):
    key_file = tmp_path / "api-key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(SettingsError, match="api_key_file"):
        load_settings(["--api-key-file", str(key_file)])


def test_a_key_and_a_key_file_together_are_refused(monkeypatch, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("one")
    monkeypatch.setenv("BACKTRACK_API_KEY", "two")
    with pytest.raises(SettingsError, match="api_key_file"):
        load_settings(["--api-key-file", str(key_file)])
