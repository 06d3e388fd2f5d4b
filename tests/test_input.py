"""What a user can type that is not plain ASCII or not sendable: encoded as curl and
browsers encode it, or refused in one line before any load."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_config
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.errors import ConfigError
from ballista.engine.run import Run


def test_a_non_ascii_path_and_query_are_percent_encoded_as_utf8() -> None:
    config = run_config("http://127.0.0.1:1/ü/日本?q=ß&x=1", "-n", "1")
    assert config.requests[0].target == "/%C3%BC/%E6%97%A5%E6%9C%AC?q=%C3%9F&x=1"


def test_a_scenario_path_is_percent_encoded_too(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'base_url = "http://127.0.0.1:1"\n[[requests]]\nname = "a"\npath = "/été/ü"\n'
    )
    config = run_config("-f", str(scenario), "-n", "1")
    assert config.requests[0].target == "/%C3%A9t%C3%A9/%C3%BC"


def test_a_unicode_host_is_idna_encoded() -> None:
    config = run_config("http://bücher.example:8080/", "-n", "1")
    assert config.origin.host == "xn--bcher-kva.example"
    assert config.origin.authority == "xn--bcher-kva.example:8080"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-H", "X: 日本"], "header values are ISO-8859-1 text"),
        (["-H", "Content-Length: abc"], "the body is 0 bytes"),
        (["-H", "Transfer-Encoding: gzip"], "Ballista frames the body itself"),
        (["--http2", "-H", "Connection: keep-alive"], "not allowed in HTTP/2"),
    ],
)
def test_unsendable_headers_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "http://127.0.0.1:1/", "-n", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_credentials_in_the_url_are_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="credentials in the URL are not sent"):
        run_config("http://user:secret@127.0.0.1:1/", "-n", "1")


def test_a_matching_content_length_is_allowed() -> None:
    config = run_config("http://127.0.0.1:1/", "-b", "hello", "-H", "Content-Length: 5")
    assert config.requests[0].body == b"hello"


async def test_the_encoded_path_reaches_the_server(target: RunningTarget) -> None:
    config = run_config(target.url_for("/ü?name=日本"), "-n", "3", "-c", "1")
    result = await Run(config).run()
    assert result.final.requests == result.final.responses == 3
    assert target.stats.requests == 3


async def test_the_runs_own_summary_hides_secret_query_values(target: RunningTarget) -> None:
    url = target.url_for("/?token=s3cret&sig=abc&X-Amz-Signature=def&pwd=p&page=2")
    result = await Run(run_config(url, "-n", "1")).run()
    shown = result.meta.target
    assert "s3cret" not in shown and "abc" not in shown and "def" not in shown
    assert "pwd=p" not in shown and "page=2" in shown


@pytest.mark.parametrize("depth", [40, 600])
def test_absurdly_nested_scenarios_are_one_line(tmp_path: Path, depth: int) -> None:
    scenario = tmp_path / "deep.toml"
    scenario.write_text("name = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match=r"^deep.toml: nested too deeply") as info:
        run_config("-f", str(scenario))
    assert "\n" not in str(info.value)
