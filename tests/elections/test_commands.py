"""Commands validate themselves; the codec is canonical and strict."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.elections import (
    NAME_MAX_CHARS,
    TTL_MS_MAX,
    Campaign,
    Command,
    CommandError,
    Expire,
    InvalidArgument,
    Resign,
    Revoke,
    Withdraw,
    decode_command,
    encode_command,
    lease_key_digest,
    validate_lease_key,
    validate_name,
    validate_token,
    validate_ttl_ms,
)
from sidecar.elections.commands import MAX_COMMAND_BYTES, UINT64_MAX

D = lease_key_digest("k" * 22)
EXAMPLES: list[Command] = [
    Campaign(
        election="settlement-eur",
        candidate="worker-0",
        ttl_ms=5000,
        key_digest=D,
        proposed_at_unix_ms=1,
    ),
    Resign(election="settlement-eur", key_digest=D, token=42, proposed_at_unix_ms=2),
    Resign(election="settlement-eur", key_digest=D, proposed_at_unix_ms=3),
    Withdraw(election="settlement-eur", candidate="worker-1", proposed_at_unix_ms=4),
    Revoke(election="settlement-eur", token=42, proposed_at_unix_ms=5, reason="stream broke"),
    Expire(election="settlement-eur", token=42, proposed_at_unix_ms=0),
]


def doc(command: Command) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(encode_command(command))
    return loaded


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: type(c).__name__)
def test_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


def test_encoding_is_canonical_json_with_tags() -> None:
    data = encode_command(EXAMPLES[0])
    assert data == (
        b'{"candidate":"worker-0","election":"settlement-eur","key_digest":"'
        + D.encode()
        + b'","proposed_at_unix_ms":1,"ttl_ms":5000,"type":"campaign","v":2}'
    )


def test_lease_keys_and_digests() -> None:
    key = "Ab0_-" * 5 + "zz"
    assert validate_lease_key(key) == key
    assert lease_key_digest(key) == hashlib.sha256(key.encode()).hexdigest()
    for bad, fragment in [
        ("x" * 21, "22 to 128 characters, got 21"),
        ("x" * 129, "22 to 128 characters, got 129"),
        ("x" * 21 + ".", "letters, digits, '_' and '-'"),
        (7, "must be a string"),
    ]:
        with pytest.raises(InvalidArgument, match="lease_key") as info:
            validate_lease_key(bad)
        assert fragment in str(info.value)
    secret = "s3cret" * 4 + "!"
    with pytest.raises(InvalidArgument) as info:
        lease_key_digest(secret)
    assert secret not in str(info.value), "a key never appears in an error"


@pytest.mark.parametrize(
    "value", ["a", "A.b_c-9", "x" * NAME_MAX_CHARS, "settlement-eur", "0", "..", "-"]
)
def test_valid_names(value: str) -> None:
    assert validate_name("election", value) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        ("x" * (NAME_MAX_CHARS + 1), "at most 128 characters, got 129"),
        ("a b", "' ' at position 1"),
        ("a/b", "'/' at position 1"),
        ("é", "'é' at position 0"),
        ("ok\n", "'\\n' at position 2"),
        (7, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
    ],
)
def test_invalid_names_say_why(value: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^candidate") as info:
        validate_name("candidate", value)
    assert fragment in str(info.value)
    assert info.value.field == "candidate"


def test_ttl_bounds() -> None:
    assert validate_ttl_ms(1) == 1
    assert validate_ttl_ms(TTL_MS_MAX) == TTL_MS_MAX
    for bad in (0, -1, TTL_MS_MAX + 1, True, 1.5, "100"):
        with pytest.raises(InvalidArgument, match="ttl_ms"):
            validate_ttl_ms(bad)
    # The API passes its configured range.
    with pytest.raises(InvalidArgument, match="between 1000 and 60000, got 999"):
        validate_ttl_ms(999, min_ttl_ms=1000, max_ttl_ms=60_000)


def test_token_bounds() -> None:
    assert validate_token(UINT64_MAX) == UINT64_MAX
    for bad in (0, -3, UINT64_MAX + 1, False):
        with pytest.raises(InvalidArgument, match="fencing_token"):
            validate_token(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Campaign(election="", candidate="w", ttl_ms=1, key_digest=D, proposed_at_unix_ms=0),
        lambda: Campaign(
            election="e", candidate="w w", ttl_ms=1, key_digest=D, proposed_at_unix_ms=0
        ),
        lambda: Campaign(
            election="e", candidate="w", ttl_ms=0, key_digest=D, proposed_at_unix_ms=0
        ),
        lambda: Campaign(
            election="e", candidate="w", ttl_ms=1, key_digest=D, proposed_at_unix_ms=-1
        ),
        lambda: Campaign(
            election="e", candidate="w", ttl_ms=1, key_digest="ab", proposed_at_unix_ms=0
        ),
        lambda: Resign(election="e", key_digest=D.upper(), proposed_at_unix_ms=0),
        lambda: Resign(election="", key_digest=D, proposed_at_unix_ms=0),
        lambda: Resign(election="e", key_digest=D, token=0, proposed_at_unix_ms=0),
        lambda: Withdraw(election="e", candidate="", proposed_at_unix_ms=0),
        lambda: Revoke(election="e", token=1, proposed_at_unix_ms=0, reason="x" * 257),
        lambda: Revoke(election="e", token=1, proposed_at_unix_ms=0, reason="a\nb"),
        lambda: Expire(election="e", token=UINT64_MAX + 1, proposed_at_unix_ms=0),
    ],
)
def test_commands_validate_themselves(make: Any) -> None:
    with pytest.raises(InvalidArgument):
        make()


def corrupt(command: Command, **changes: Any) -> bytes:
    document = doc(command)
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"campaign"', "not a JSON object"),
        (corrupt(EXAMPLES[0], v=1), "unsupported command version 1"),
        (corrupt(EXAMPLES[0], v=True), "unsupported command version True"),
        (corrupt(EXAMPLES[0], v=...), "unsupported command version None"),
        (corrupt(EXAMPLES[0], type="elect"), "unknown command type 'elect'"),
        (corrupt(EXAMPLES[0], type=...), "unknown command type None"),
        (corrupt(EXAMPLES[0], ttl_ms=...), "campaign command is missing ttl_ms"),
        (corrupt(EXAMPLES[0], extra=1), "unexpected field(s) extra"),
        (corrupt(EXAMPLES[0], ttl_ms=0), "invalid campaign command: ttl_ms"),
        (corrupt(EXAMPLES[0], ttl_ms="5000"), "ttl_ms must be an integer"),
        (corrupt(EXAMPLES[0], election="a b"), "invalid campaign command: election"),
        (corrupt(EXAMPLES[1], token=None), "null field(s) token"),
        (corrupt(EXAMPLES[1], candidate="w"), "unexpected field(s) candidate"),
        (corrupt(EXAMPLES[1], key_digest=...), "resign command is missing key_digest"),
        (corrupt(EXAMPLES[0], key_digest="x" * 64), "key_digest must be 64 lowercase hex"),
        (corrupt(EXAMPLES[4], reason=...), "revoke command is missing reason"),
        (corrupt(EXAMPLES[5], token=-1), "fencing_token must be between"),
        (b'{"v":1,"v":1}', "duplicate key 'v'"),
        (corrupt(EXAMPLES[0]).replace(b"5000", b"5000.0"), "must be integers"),
        (corrupt(EXAMPLES[0]).replace(b"5000", b"NaN"), "must be integers"),
        (b"[" * 100_000, "more than 4096"),
        (b"[" * 4000, "not valid UTF-8 JSON"),
    ],
)
def test_malformed_commands_raise_command_error(data: bytes, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        decode_command(data)
    assert fragment in str(info.value)


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(CommandError, match="must be bytes"):
        decode_command("{}")  # type: ignore[arg-type]
    assert len(encode_command(EXAMPLES[4])) < MAX_COMMAND_BYTES


names = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=NAME_MAX_CHARS)
uints = st.integers(min_value=0, max_value=UINT64_MAX)
tokens = st.integers(min_value=1, max_value=UINT64_MAX)
digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
commands = st.one_of(
    st.builds(
        Campaign,
        election=names,
        candidate=names,
        ttl_ms=st.integers(1, TTL_MS_MAX),
        key_digest=digests,
        proposed_at_unix_ms=uints,
    ),
    st.builds(Resign, election=names, key_digest=digests, token=tokens, proposed_at_unix_ms=uints),
    st.builds(Resign, election=names, key_digest=digests, proposed_at_unix_ms=uints),
    st.builds(Withdraw, election=names, candidate=names, proposed_at_unix_ms=uints),
    st.builds(
        Revoke,
        election=names,
        token=tokens,
        proposed_at_unix_ms=uints,
        reason=st.text(max_size=256).filter(str.isprintable),
    ),
    st.builds(Expire, election=names, token=tokens, proposed_at_unix_ms=uints),
)


@given(commands)
def test_every_command_round_trips_canonically(command: Command) -> None:
    data = encode_command(command)
    assert decode_command(data) == command
    assert encode_command(decode_command(data)) == data
    assert data.isascii()


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_command_error(data: bytes) -> None:
    with contextlib.suppress(CommandError):
        decode_command(data)
