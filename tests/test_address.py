"""`host:port` text: the forms accepted everywhere an address is written, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackvisor.config import ConfigError, load_config, split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("[fe80::1%eth0]:8000", ("fe80::1%eth0", 8000)),
        ("localhost:8000", ("localhost", 8000)),
        ("db.internal:5432", ("db.internal", 5432)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("8000", ("127.0.0.1", 8000)),
        (" 8000\n", ("127.0.0.1", 8000)),
        (" localhost:65535 ", ("localhost", 65535)),
        ("localhost:08000", ("localhost", 8000)),
        # Read as before the one parser existed: an empty host is the default one, and
        # an unbracketed IPv6 address is taken when what precedes the port is one.
        (":8000", ("127.0.0.1", 8000)),
        ("::1:8000", ("::1", 8000)),
    ],
)
def test_accepted_forms(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


def test_a_bare_port_takes_the_default_host() -> None:
    assert split_host_port("7070", default_host="::1") == ("::1", 7070)
    assert split_host_port("localhost:7070", default_host="::1") == ("localhost", 7070)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "(got '')"),
        ("localhost", "(got 'localhost')"),
        ("localhost:", "the port is not a number"),
        ("localhost:http", "the port is not a number"),
        ("localhost:-1", "the port is not a number"),
        ("localhost:8000.5", "the port is not a number"),
        ("localhost:\u00b9", "the port is not a number"),
        ("fe80::zz:8000", "write an IPv6 address in brackets, [fe80::zz]:8000"),
        ("[localhost]:8000", "only an IPv6 address goes in brackets"),
        ("[::1:8000", "'[::1' is not a host name or address"),
        ("my host:8000", "'my host' is not a host name or address"),
        ("http://localhost:8000", "'http://localhost' is not a host name or address"),
        ("0", "port must be between 1 and 65535 (got 0 in '0')"),
        ("localhost:0", "port must be between 1 and 65535 (got 0 in 'localhost:0')"),
        ("localhost:65536", "port must be between 1 and 65535 (got 65536 in 'localhost:65536')"),
    ],
)
def test_rejected_forms_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        split_host_port(text)
    message = str(caught.value)
    assert reason in message
    if not message.startswith("port must be"):
        assert message.startswith("expected host:port like 127.0.0.1:8000, [::1]:8000, localhost:8000")


def load_tcp(folder: Path, tcp: str, allow_remote: bool = False) -> list[str]:
    """The errors of a stack whose control socket also listens on `tcp` (none: [])."""
    path = folder / "services.yaml"
    remote = "\n    allow_remote: true" if allow_remote else ""
    path.write_text(f'settings:\n  control:\n    tcp: "{tcp}"{remote}\nservices:\n  a: {{command: run}}\n')
    try:
        config = load_config(path, {})
    except ConfigError as exc:
        return exc.errors
    assert config.settings.control.tcp == tcp
    return []


@pytest.mark.parametrize("tcp", ["127.0.0.1:7070", "[::1]:7070", "localhost:7070", "7070"])
def test_control_tcp_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tcp: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_tcp(tmp_path, tcp) == []


def test_control_tcp_errors_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_tcp(tmp_path, "localhost:99999") == [
        "services.yaml:3:10: settings.control.tcp: port must be between 1 and 65535 "
        "(got 99999 in 'localhost:99999')"
    ]
    assert load_tcp(tmp_path, "::1:7070") == []
    assert load_tcp(tmp_path, "fe80::zz:7070") == [
        "services.yaml:3:10: settings.control.tcp: expected host:port like 127.0.0.1:8000, [::1]:8000, "
        "localhost:8000 or a bare port like 8000 (got 'fe80::zz:7070': write an IPv6 address in brackets, "
        "[fe80::zz]:7070)"
    ]


def test_control_tcp_off_loopback_needs_allow_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_tcp(tmp_path, "0.0.0.0:7070") == [
        "services.yaml:2:3: settings.control: tcp: 0.0.0.0 is not a loopback address; "
        "set allow_remote: true to listen on it"
    ]
    assert load_tcp(tmp_path, "0.0.0.0:7070", allow_remote=True) == []
    assert load_tcp(tmp_path, "[::]:7070", allow_remote=True) == []
