"""raft-sidecar serve settings: flags beat environment beat defaults; all errors at once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.config import ConfigError, add_arguments, load

PEERS = "s0=10.0.0.1:7400,s1=10.0.0.2:7400,s2=10.0.0.3:7400"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_beat_environment_beat_defaults() -> None:
    env = {
        "RAFT_SIDECAR_NODE_ID": "s1",
        "RAFT_SIDECAR_PEERS": PEERS,
        "RAFT_SIDECAR_DATA_DIR": "/env/data",
        "RAFT_SIDECAR_TICK_MS": "20",
        "RAFT_SIDECAR_INSECURE_PLAINTEXT_PEERS": "true",
    }
    config = load(parse("--data-dir", "/flag/data"), env)
    assert config.node_id == "s1"
    assert config.data_dir == "/flag/data"
    assert config.tick_ms == 20
    assert config.peers == {"s0": "10.0.0.1:7400", "s1": "10.0.0.2:7400", "s2": "10.0.0.3:7400"}
    assert config.api_listen == "127.0.0.1:7401"  # default
    assert config.insecure_plaintext_peers


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load(
            parse(
                "--node-id", "s9",
                "--peers", "s0=host:99999,s1",
                "--tick-ms", "abc",
                "--ttl-min-ms", "5000",
                "--ttl-max-ms", "100",
            ),
            {},
        )  # fmt: skip
    text = str(err.value)
    assert "--data-dir (or RAFT_SIDECAR_DATA_DIR) is required" in text
    assert "'s1' is not of the form id=host:port" in text
    assert "--tick-ms='abc'" in text
    assert "--ttl-min-ms must not exceed --ttl-max-ms" in text


def test_node_must_be_one_of_the_peers_and_addresses_must_parse() -> None:
    with pytest.raises(ConfigError) as err:
        load(parse("--node-id", "s9", "--peers", "s0=h:1,s1=h:99999", "--data-dir", "/d"), {})
    text = str(err.value)
    assert "--node-id='s9' is not one of --peers (s0, s1)" in text
    assert "s1='h:99999' is not host:port" in text


PLAIN = ("--node-id", "s0", "--peers", PEERS, "--data-dir", "/d", "--insecure-plaintext-peers")
"""A valid plaintext configuration beyond loopback, asked for deliberately."""


def test_lease_shorter_than_two_election_timeouts_is_refused() -> None:
    args = parse(*PLAIN, "--ttl-min-ms", "200")
    with pytest.raises(ConfigError, match="below two election timeouts"):
        load(args, {})


def test_unix_socket_api_address_is_accepted() -> None:
    args = parse(*PLAIN)
    config = load(args, {"RAFT_SIDECAR_API_LISTEN": "unix:/run/sidecar.sock"})
    assert config.api_listen == "unix:/run/sidecar.sock"


BASE = ("--node-id", "s0", "--peers", PEERS, "--data-dir", "/d")


def test_health_port_defaults_to_all_interfaces_and_can_be_turned_off() -> None:
    assert load(parse(*PLAIN), {}).health_listen == "0.0.0.0:7403"
    assert load(parse(*PLAIN), {"RAFT_SIDECAR_HEALTH_LISTEN": ""}).health_listen == ""
    with pytest.raises(ConfigError, match="--health-listen='nope' is not host:port"):
        load(parse(*PLAIN, "--health-listen", "nope"), {})


def test_peer_tls_needs_all_three_readable_pem_files(tmp_path: Path) -> None:
    pem = tmp_path / "a.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01")
    assert load(parse(*PLAIN), {}).tls is None

    with pytest.raises(ConfigError) as err:
        load(parse(*BASE, "--tls-cert-file", str(pem)), {})
    assert "--tls-key-file, --tls-ca-file missing" in str(err.value)

    with pytest.raises(ConfigError) as err:
        load(
            parse(
                *BASE,
                "--tls-cert-file", str(pem),
                "--tls-key-file", str(tmp_path / "absent"),
                "--tls-ca-file", str(garbage),
            ),
            {},
        )  # fmt: skip
    text = str(err.value)
    assert "--tls-key-file=" in text and "cannot read: No such file or directory" in text
    assert f"--tls-ca-file={str(garbage)!r}: not a PEM file" in text

    env = {
        "RAFT_SIDECAR_TLS_CERT_FILE": str(pem),
        "RAFT_SIDECAR_TLS_KEY_FILE": str(pem),
        "RAFT_SIDECAR_TLS_CA_FILE": str(pem),
    }
    tls = load(parse(*BASE), env).tls
    assert tls is not None and (tls.cert_file, tls.key_file, tls.ca_file) == (str(pem),) * 3


LOOPBACK_PEERS = "s0=127.0.0.1:7400,s1=127.0.0.2:7400,s2=[::1]:7402"


def test_plaintext_peer_traffic_beyond_loopback_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load(parse(*BASE), {})
    (line,) = str(err.value).splitlines()
    assert line.startswith("plaintext peer traffic must stay on loopback")
    assert "--peer-listen=0.0.0.0:7400" in line and "--peers s0, s1, s2" in line
    assert "--insecure-plaintext-peers" in line and "--tls-cert-file" in line

    # Loopback needs no flag: 127/8, [::1] and localhost.
    loopback = ("--node-id", "s0", "--peers", LOOPBACK_PEERS, "--data-dir", "/d")
    for listen in ("127.0.0.1:7400", "127.3.0.9:7400", "[::1]:7400", "localhost:7400"):
        config = load(parse(*loopback, "--peer-listen", listen), {})
        assert config.tls is None and not config.insecure_plaintext_peers
    # A host name may resolve anywhere; the peers count as well as the listener.
    with pytest.raises(ConfigError, match=r"\(--peer-listen=sidecar-0:7400: not loopback\)"):
        load(parse(*loopback, "--peer-listen", "sidecar-0:7400"), {})
    with pytest.raises(ConfigError, match=r"\(--peers s1: not loopback\)"):
        load(
            parse(
                "--node-id", "s0", "--peers", "s0=127.0.0.1:1,s1=10.1.1.1:1",
                "--data-dir", "/d", "--peer-listen", "127.0.0.1:1",
            ),
            {},
        )  # fmt: skip


def test_the_insecure_flag_is_a_switch_and_a_variable() -> None:
    assert load(parse(*BASE, "--insecure-plaintext-peers"), {}).insecure_plaintext_peers
    env = {"RAFT_SIDECAR_INSECURE_PLAINTEXT_PEERS": "true"}
    assert load(parse(*BASE), env).insecure_plaintext_peers
    with pytest.raises(ConfigError, match="must stay on loopback"):
        load(parse(*BASE, "--insecure-plaintext-peers=false"), env)
    with pytest.raises(ConfigError, match="INSECURE_PLAINTEXT_PEERS='maybe': use true or false"):
        load(parse(*BASE), {"RAFT_SIDECAR_INSECURE_PLAINTEXT_PEERS": "maybe"})


def test_peer_tls_needs_ids_that_certificates_can_name(tmp_path: Path) -> None:
    pem = tmp_path / "a.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    tls = ("--tls-cert-file", str(pem), "--tls-key-file", str(pem), "--tls-ca-file", str(pem))
    config = load(parse(*BASE, *tls, "--cluster-id", "payments.rs-raft-sidecar"), {})
    assert config.tls is not None and config.cluster_id == "payments.rs-raft-sidecar"
    with pytest.raises(ConfigError) as err:
        load(
            parse(
                "--node-id", "S0", "--peers", "S0=10.0.0.1:1,s.1=10.0.0.2:1", "--data-dir", "/d",
                "--cluster-id", "Payments/EU", "--insecure-plaintext-peers", *tls,
            ),
            {},
        )  # fmt: skip
    text = str(err.value)
    assert "--insecure-plaintext-peers contradicts the peer TLS files" in text
    assert "--cluster-id='Payments/EU': with peer TLS it must be a lower-case DNS name" in text
    assert "node id 'S0': with peer TLS it must be one lower-case DNS label" in text
    assert "node id 's.1'" in text


def test_the_worker_api_stays_on_loopback_unless_asked_otherwise() -> None:
    assert load(parse(*PLAIN), {}).api_listen == "127.0.0.1:7401"
    for listen in ("[::1]:7401", "localhost:7401", "unix:/run/s.sock"):
        assert load(parse(*PLAIN, "--api-listen", listen), {}).api_listen == listen
    for listen in ("0.0.0.0:7401", "10.0.0.1:7401", "sidecar-0:7401"):
        with pytest.raises(ConfigError) as err:
            load(parse(*PLAIN, "--api-listen", listen), {})
        (line,) = str(err.value).splitlines()
        assert line.startswith(f"--api-listen={listen}: the worker API is plaintext")
        assert "--insecure-api-listen" in line
    config = load(parse(*PLAIN, "--api-listen", "0.0.0.0:7401", "--insecure-api-listen"), {})
    assert config.insecure_api_listen and config.api_listen == "0.0.0.0:7401"
    env = {"RAFT_SIDECAR_INSECURE_API_LISTEN": "true", "RAFT_SIDECAR_API_LISTEN": "0.0.0.0:1"}
    assert load(parse(*PLAIN), env).insecure_api_listen


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    assert load(parse(*PLAIN), {}).event_loop == "uvloop"
    assert load(parse(*PLAIN), {"RAFT_SIDECAR_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="--event-loop='trio': use uvloop or asyncio"):
        load(parse(*PLAIN, "--event-loop", "trio"), {})
