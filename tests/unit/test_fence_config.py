"""listener.conf: a typo or a bad value is a ConfigError naming the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmha.errors import KvmhaError
from kvmha.fence.listener import Config, ConfigError, config_text, main

GOOD = """\
[listener]
host = host1
port = 1230
peer_timeout = 2.5
syslog = no
[peers]
host2 = 10.0.0.12
host3 = [fd00::3]:1231
"""


def test_a_good_file_and_its_round_trip(tmp_path: Path) -> None:
    cfg = Config.parse(GOOD)
    assert (cfg.host, cfg.port, cfg.peer_timeout, cfg.syslog) == ("host1", 1230, 2.5, False)
    assert cfg.peers == {"host2": ("10.0.0.12", 1230), "host3": ("fd00::3", 1231)}
    again = Config.parse(config_text(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[listener]\nhost = h1\nprot = 1230\n", 3, ["unknown setting 'prot'", "'port'"]),
        ("[listener]\nhost = h1\nport = 12x\n", 3, ["port = '12x'", "65535"]),
        ("[listener]\nhost = h1\nport = 70000\n", 3, ["port"]),
        ("[listener]\nhost = h1\npeer_timeout = nan\n", 3, ["peer_timeout", "seconds"]),
        ("[listener]\nhost = h1\npeer_timeout = inf\n", 3, ["peer_timeout"]),
        ("[listener]\nhost = h1\nsyslog = maybe\n", 3, ["syslog", "yes or no"]),
        ("[listener]\nhost = h1\n[peer]\nh2 = x\n", 3, ["unknown section [peer]"]),
        ("[listener]\nhost = h1\n[peers]\nh2 = 10.0.0.2:http\n", 4, ["peer h2"]),
    ],
)
def test_mistakes_name_the_line_and_the_fix(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        Config.parse(text, "/etc/kvmha/fence/listener.conf")
    err = ei.value
    assert isinstance(err, KvmhaError) and err.fix
    assert err.message.startswith(f"/etc/kvmha/fence/listener.conf:{line}: "), err.message
    for w in words:
        assert w in str(err), (w, str(err))


def test_syntax_errors_and_missing_files_raise_not_exit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        Config.parse("host = h1\n")  # no section header
    assert ei.value.fix
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(str(tmp_path / "nope.conf"))


def test_main_reports_a_bad_file_in_two_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "l.conf"
    p.write_text("[listener]\nhost = h1\nprot = 1\n")
    assert main(["--config", str(p), "--check"]) == 6
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"kvmha-fence-listener: {p}:3: unknown setting 'prot'"
    assert err[1].startswith("  fix: did you mean 'port'?")
