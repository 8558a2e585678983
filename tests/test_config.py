"""Settings: parsing, validation, and errors naming the setting, the value and what is accepted."""

from __future__ import annotations

import pytest

from fiddler_trace import ConfigurationError
from fiddler_trace._config import SETTINGS, Settings, load_settings

BASE = {"FIDDLER_URL": "https://acme.fiddler.ai", "FIDDLER_TOKEN": "tok"}


def test_defaults_match_the_contract():
    """With nothing set, the library is off and every default is the documented one."""
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.enabled, settings.sample_rate, settings.batch_size) == (False, 1.0, 1000)
    assert (settings.flush_interval, settings.max_queue_size) == (1.0, 100_000)
    assert (settings.retry_deadline, settings.timeout, settings.exit_timeout) == (300.0, 10.0, 5.0)
    assert (settings.max_value_chars, settings.verify, settings.spool_dir) == (65_536, True, None)


@pytest.mark.parametrize("text", ["1", "true", "YES", " on "])
def test_enabled_true_words(text):
    """1/true/yes/on in any case enable the library."""
    assert load_settings(environ={**BASE, "FIDDLER_TRACE_ENABLED": text}).enabled


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_enabled_false_words(text):
    """0/false/no/off (and empty) leave it off."""
    assert not load_settings(environ={"FIDDLER_TRACE_ENABLED": text}).enabled


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("FIDDLER_TRACE_ENABLED", "maybe", "1/true/yes/on"),
        ("FIDDLER_TRACE_SAMPLE_RATE", "1.5", "at most 1"),
        ("FIDDLER_TRACE_SAMPLE_RATE", "half", "a number"),
        ("FIDDLER_TRACE_BATCH_SIZE", "5000", "at most 1000"),
        ("FIDDLER_TRACE_BATCH_SIZE", "0", "at least 1"),
        ("FIDDLER_TRACE_BATCH_SIZE", "2.5", "a whole number"),
        ("FIDDLER_TRACE_FLUSH_INTERVAL", "0", "greater than 0"),
        ("FIDDLER_TRACE_MAX_QUEUE_SIZE", "-1", "at least 1"),
        ("FIDDLER_TRACE_RETRY_DEADLINE", "nan", "a number"),
        ("FIDDLER_TRACE_TIMEOUT", "0", "greater than 0"),
        ("FIDDLER_TRACE_EXIT_TIMEOUT", "soon", "a number"),
        ("FIDDLER_TRACE_MAX_VALUE_CHARS", "0", "at least 1"),
        ("FIDDLER_URL", "acme.fiddler.ai", "http(s) URL"),
        ("FIDDLER_CA_BUNDLE", "/no/such/bundle.pem", "CA bundle"),
    ],
)
def test_bad_environment_value_names_variable_value_and_accepted(variable, value, accepted):
    """A bad variable raises ConfigurationError naming it, its value and what is accepted."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={**BASE, variable: value})
    message = str(caught.value)
    assert variable in message
    assert repr(value.strip()) in message or repr(value) in message
    assert accepted in message


def test_bad_argument_names_the_argument():
    """A bad init() argument is named as the argument, not the variable."""
    with pytest.raises(ConfigurationError, match=r"setting 'batch_size' is 0"):
        load_settings(environ={}, batch_size=0)
    with pytest.raises(ConfigurationError, match="unknown setting 'batchsize'"):
        load_settings(environ={}, batchsize=10)
    with pytest.raises(ConfigurationError, match="setting 'sample_rate'"):
        load_settings(environ={}, sample_rate=True)


def test_arguments_override_the_environment():
    """init() arguments win over FIDDLER_* variables."""
    env = {**BASE, "FIDDLER_TRACE_BATCH_SIZE": "10"}
    assert load_settings(environ=env, batch_size=20).batch_size == 20
    assert load_settings(environ=env).batch_size == 10


@pytest.mark.parametrize("missing", ["FIDDLER_URL", "FIDDLER_TOKEN"])
def test_enabled_without_url_or_token_is_an_error(missing):
    """Enabled without a URL or token fails and says which is missing."""
    env = {**BASE, "FIDDLER_TRACE_ENABLED": "1"}
    del env[missing]
    with pytest.raises(ConfigurationError, match=missing):
        load_settings(environ=env)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8008", "http://localhost:8008", "http://[::1]:8008", "http://127.5.0.1"],
)
def test_plain_http_to_loopback_is_allowed(url):
    """http:// to a loopback host is fine: the token does not leave the machine."""
    assert load_settings(environ={**BASE, "FIDDLER_URL": url}).url == url


def test_plain_http_to_a_remote_host_is_refused():
    """http:// to another host is refused unless allow_insecure_http is set."""
    env = {**BASE, "FIDDLER_URL": "http://fiddler.internal:8080"}
    with pytest.raises(ConfigurationError, match="FIDDLER_TRACE_ALLOW_INSECURE_HTTP"):
        load_settings(environ=env)
    allowed = {**env, "FIDDLER_TRACE_ALLOW_INSECURE_HTTP": "true"}
    assert load_settings(environ=allowed).url == "http://fiddler.internal:8080"


def test_trailing_slash_is_dropped():
    """The URL is kept without a trailing slash."""
    assert load_settings(environ={**BASE, "FIDDLER_URL": "https://a.b/"}).url == "https://a.b"


def test_ca_bundle_path_is_kept(tmp_path):
    """FIDDLER_CA_BUNDLE with an existing file becomes the verify setting."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert load_settings(environ={**BASE, "FIDDLER_CA_BUNDLE": str(bundle)}).verify == str(bundle)


def test_redact_accepts_names_or_callable():
    """redact takes column names or a callable; anything else is refused."""
    assert load_settings(environ={}, redact=["ssn", "email"]).redact == frozenset({"ssn", "email"})
    assert load_settings(environ={}, redact="ssn").redact == frozenset({"ssn"})
    assert callable(load_settings(environ={}, redact=lambda e: e).redact)
    with pytest.raises(ConfigurationError, match="redact"):
        load_settings(environ={}, redact=[1, 2])


def test_settings_repr_hides_the_token():
    """repr(Settings) shows *** for the token."""
    settings = load_settings(environ={**BASE, "FIDDLER_TOKEN": "super-secret-token"})
    assert "super-secret-token" not in repr(settings)
    assert "token='***'" in repr(settings)


def test_every_setting_is_documented():
    """Each setting has a doc line and, except redact, one variable."""
    for setting in SETTINGS:
        assert setting.doc
        assert setting.env or setting.name == "redact"
    assert len({s.env for s in SETTINGS if s.env}) == len(SETTINGS) - 1


@pytest.mark.parametrize("text", ["false", "0", "off"])
def test_tls_verification_cannot_be_switched_off_from_the_environment(text):
    """FIDDLER_CA_BUNDLE=false is refused: only verify=False in code turns TLS checks off."""
    with pytest.raises(ConfigurationError, match="FIDDLER_CA_BUNDLE"):
        load_settings(environ={**BASE, "FIDDLER_CA_BUNDLE": text})


def test_verify_false_in_code_is_allowed_and_warned(caplog):
    """verify=False as an argument works, with a warning."""
    assert load_settings(environ=BASE, verify=False).verify is False
    assert "TLS verification is off" in caplog.text


@pytest.mark.parametrize(
    ("value", "c_loaded"), [("1", False), ("off", True), ("", True), ("maybe", None)]
)
def test_the_variable_that_turns_the_c_extension_off_is_read_as_a_boolean(value, c_loaded):
    """FIDDLER_TRACE_NO_EXTENSIONS: true turns the C extension off, false or empty leaves it;
    anything else is refused at import, naming the variable and what is accepted."""
    import os
    import subprocess
    import sys

    from fiddler_trace._native import speedups

    if speedups is None and c_loaded:
        pytest.skip("the C extension is not built here, or turned off")
    env = {**os.environ, "FIDDLER_TRACE_NO_EXTENSIONS": value}
    code = "import fiddler_trace._native as n; print(n.speedups is not None)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    if c_loaded is None:
        assert result.returncode != 0
        assert "environment variable FIDDLER_TRACE_NO_EXTENSIONS is 'maybe'" in result.stderr
        assert "accepted: true/false" in result.stderr
    else:
        assert result.stdout.strip() == str(c_loaded)
