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
