"""Canonical JSON (RFC 8785), content hashes, Ed25519 signatures, key rotation and diffs."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import struct
import types
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from learning.signing import (
    CanonicalJSONError,
    KeyNotUsableError,
    PublicKey,
    Signature,
    SigningKey,
    TrustedKeys,
    canonical_json,
    content_digest,
    content_hash,
    diff_artifacts,
    generate_key,
    key_id_of,
    policy_payload,
    sign,
    signed_artifact,
    verify,
)

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def reverse_keys(value: Any) -> Any:
    """The same JSON value with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


def c(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


# --------------------------------------------------------------------------- canonical JSON


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert c({"b": 2, "a": [True, None, "x"], "c": {}}) == '{"a":[true,null,"x"],"b":2,"c":{}}'


def test_canonical_json_is_independent_of_key_order_at_every_depth() -> None:
    a = {"z": {"y": 1, "x": [{"q": 1, "p": 2}]}, "a": 0}
    b = {"a": 0, "z": {"x": [{"p": 2, "q": 1}], "y": 1}}
    assert canonical_json(a) == canonical_json(b)
    assert c(a) == '{"a":0,"z":{"x":[{"p":2,"q":1}],"y":1}}'


def test_canonical_json_sorts_keys_by_utf16_code_units_as_in_rfc8785() -> None:
    # RFC 8785 §3.2.3: U+1F600 is the surrogate pair D83D DE00, which sorts before
    # U+FB33 in UTF-16 though it comes after it by code point.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(value) != keys  # plain code-point order would differ


def test_canonical_json_keeps_unicode_as_utf8_not_escapes() -> None:
    assert canonical_json("é€😀") == '"é€😀"'.encode()
    assert canonical_json("😀") == b'"\xf0\x9f\x98\x80"'  # astral: 4 UTF-8 bytes
    # U+2028, U+2029 and DEL are not escaped by JSON.stringify, so not by JCS either.
    assert canonical_json("\u2028\u2029\x7f") == '"\u2028\u2029\x7f"'.encode()


def test_canonical_json_escapes_quotes_backslash_and_control_characters() -> None:
    text = '"\\\b\t\n\f\r\x00\x01\x1f'
    assert c(text) == '"\\"\\\\\\b\\t\\n\\f\\r\\u0000\\u0001\\u001f"'


def test_canonical_json_rejects_lone_surrogates() -> None:
    with pytest.raises(CanonicalJSONError, match="lone surrogate U\\+D83D"):
        canonical_json({"a": "x\ud83d"})
    with pytest.raises(CanonicalJSONError, match="lone surrogate"):
        canonical_json({"\udc00": 1})


# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_canonical_json_numbers_match_rfc8785_appendix_b(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert c(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (1, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (0.2 + 0.1, "0.30000000000000004"),  # shortest round-trip, not 17 digits
        (100.0, "100"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.25e-7, "1.25e-7"),
        (5e-324, "5e-324"),
        (-1.5, "-1.5"),
        (2**53 - 1, "9007199254740991"),
        (-(2**53 - 1), "-9007199254740991"),
    ],
)
def test_canonical_json_writes_numbers_as_ecmascript_does(value: float, expected: str) -> None:
    assert c(value) == expected


def test_one_and_one_point_zero_hash_alike_but_true_and_one_do_not() -> None:
    assert content_hash({"x": 1.0}) == content_hash({"x": 1})
    assert content_hash({"x": True}) != content_hash({"x": 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_rejects_nan_and_infinity_with_the_path(bad: float) -> None:
    with pytest.raises(CanonicalJSONError, match=r"\$\.hyper\.temperature is .*no NaN or infinity"):
        canonical_json({"hyper": {"temperature": bad}})


def test_canonical_json_rejects_integers_a_double_cannot_hold_exactly() -> None:
    with pytest.raises(CanonicalJSONError, match="no IEEE-754 double represents"):
        canonical_json(2**53 + 1)
    with pytest.raises(CanonicalJSONError, match=r"\$\[1\]"):
        canonical_json([0, -(2**60) - 1])
    with pytest.raises(CanonicalJSONError, match="no IEEE-754 double represents"):
        canonical_json(10**400)


def test_large_integers_a_double_holds_exactly_are_written_as_that_double() -> None:
    assert c(2**53) == "9007199254740992"
    assert c(10**20) == "100000000000000000000"
    assert c(10**21) == "1e+21"
    # The shortest digits of 2**60 padded with zeros, as JCS writes that double.
    assert c(-(2**60)) == c(-(2.0**60)) == "-1152921504606847000"
    # JCS's own spelling of the double 57442245040387632 reads back as this integer.
    assert c(57442245040387630) == c(5.744224504038763e16) == "57442245040387630"


def test_canonical_text_read_back_by_json_loads_canonicalises_again() -> None:
    # 1e20 is written as digits, which json.loads reads back as an int.
    value = {"big": 1e20, "edge": 2.0**53}
    once = canonical_json(value)
    assert isinstance(json.loads(once)["big"], int)
    assert canonical_json(json.loads(once)) == once


@pytest.mark.parametrize(
    "bad",
    [
        {1, 2},
        b"bytes",
        dt.datetime(2025, 1, 1),
        decimal.Decimal("1.5"),
        object(),
        1 + 2j,
    ],
)
def test_canonical_json_rejects_non_json_types_with_the_path(bad: object) -> None:
    with pytest.raises(CanonicalJSONError, match=r"\$\.a\[1\] is a .*which JSON cannot represent"):
        canonical_json({"a": [0, bad]})


def test_canonical_json_rejects_non_string_keys() -> None:
    with pytest.raises(CanonicalJSONError, match="key 1 of type int"):
        canonical_json({1: "one"})


def test_canonical_json_rejects_cycles() -> None:
    loop: dict[str, Any] = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(CanonicalJSONError, match="cycle"):
        canonical_json(loop)


def test_canonical_json_allows_the_same_object_twice_when_it_is_not_a_cycle() -> None:
    shared = {"k": 1}
    assert c({"a": shared, "b": [shared, shared]}) == '{"a":{"k":1},"b":[{"k":1},{"k":1}]}'


def test_canonical_json_accepts_tuples_and_read_only_mappings() -> None:
    value = types.MappingProxyType({"b": (1, 2), "a": "x"})
    assert c(value) == '{"a":"x","b":[1,2]}'


def test_canonical_json_quotes_odd_keys_in_error_paths() -> None:
    with pytest.raises(CanonicalJSONError, match=r'\$\["a key"\]\.x is'):
        canonical_json({"a key": {"x": math.nan}})


def test_content_hash_is_sha256_of_the_canonical_bytes() -> None:
    artifact = {"b": 1, "a": "é"}
    expected = hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()
    assert content_hash(artifact) == "sha256:" + expected


def test_content_digest_is_the_bare_hex_the_models_store() -> None:
    digest = content_digest(POLICY)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert content_hash(POLICY) == "sha256:" + digest


@given(json_values)
def test_canonical_json_survives_a_json_round_trip(value: Any) -> None:
    assert canonical_json(value) == canonical_json(json.loads(json.dumps(value)))


@given(json_values)
def test_canonical_json_is_idempotent_and_parses_back_to_the_value(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once
    # Every JSON number is a double under JCS; -0.0 == 0 and 1.0 == 1 in Python too.
    assert json.loads(once, parse_int=float) == value


@given(json_values)
def test_canonical_json_ignores_key_insertion_order(value: Any) -> None:
    assert canonical_json(reverse_keys(value)) == canonical_json(value)


def significant_digits(number_text: str) -> str:
    mantissa = number_text.lstrip("-").split("e")[0]
    return mantissa.replace(".", "").strip("0")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_canonical_number_round_trips_with_the_shortest_digits(value: float) -> None:
    text = c(value)
    assert float(text) == value
    assert significant_digits(text) == significant_digits(repr(value))


# --------------------------------------------------------------------------- keys


def test_generated_key_id_is_derived_from_the_public_key() -> None:
    key = generate_key()
    assert key.key_id == hashlib.sha256(key.public_key.raw).hexdigest()[:16]
    assert key.key_id == key_id_of(key.public_key.raw) == key.public_key.key_id
    assert generate_key().key_id != key.key_id


def test_signing_key_repr_shows_no_secret() -> None:
    key = generate_key()
    assert repr(key) == f"SigningKey(key_id={key.key_id!r})"
    assert key.to_b64() not in repr(key)


def test_private_key_round_trips_through_pem_and_base64() -> None:
    key = generate_key()
    assert key.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKey.from_pem(key.to_pem()) == key
    assert SigningKey.from_b64(key.to_b64()) == key
    encrypted = key.to_pem(password=b"s3cret")
    assert b"ENCRYPTED" in encrypted
    assert SigningKey.from_pem(encrypted, password=b"s3cret").key_id == key.key_id
    with pytest.raises(ValueError):
        SigningKey.from_pem(encrypted, password=b"wrong")


def test_public_key_round_trips_through_pem_and_base64() -> None:
    public = generate_key().public_key
    assert public.to_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert PublicKey.from_pem(public.to_pem()) == public
    assert PublicKey.from_b64(public.to_b64()) == public


def test_pem_of_another_algorithm_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization

    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        SigningKey.from_pem(pem)
    public_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        PublicKey.from_pem(public_pem)


def test_bad_key_material_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        PublicKey(b"short")
    with pytest.raises(ValueError, match="not valid base64"):
        PublicKey.from_b64("not base64!")
    with pytest.raises(ValueError, match="32 raw bytes"):
        SigningKey.from_b64("AAAA")


# --------------------------------------------------------------------------- sign / verify

POLICY = {
    "doer": "PRDWriter",
    "version": 3,
    "prompts": {"system": "You write product requirement documents."},
    "hyper": {"temperature": 0.2, "max_tokens": 2048},
    "tools": ["search", "calculator"],
}


def test_sign_then_verify_round_trips() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    assert signature.key_id == key.key_id
    assert len(signature.value) == 64
    assert verify(POLICY, signature, key.public_key) is True


IDENTITY: dict[str, Any] = {"doer": "PRDWriter", "policy_id": "prdwriter", "version": 3}


def test_signed_artifact_gives_the_fields_a_policy_registration_carries() -> None:
    key = generate_key()
    fields = signed_artifact(POLICY, key, **IDENTITY)
    assert fields["artifact"] is POLICY
    assert fields["content_hash"] == content_digest(POLICY)
    assert fields["signature_key_id"] == key.key_id
    signature = Signature.from_parts(fields["signature_key_id"], fields["signature"])
    payload = policy_payload(**IDENTITY, content_hash=content_digest(POLICY))
    assert verify(payload, signature, key.public_key) is True
    # The artifact alone is no longer what is signed.
    assert verify(POLICY, signature, key.public_key) is False


def test_the_policy_payload_is_canonical_json_of_the_documented_members() -> None:
    digest = "ab" * 32
    payload = policy_payload(
        doer="PRDWriter", policy_id="prdwriter", version=3, content_hash=digest
    )
    assert canonical_json(payload) == (
        b'{"content_hash":"sha256:' + digest.encode() + b'","doer":"PRDWriter",'
        b'"format":"learnops.policy-signature/2","policy_id":"prdwriter","version":3}'
    )


SIGNER = generate_key()


@given(
    doer=st.sampled_from(["PRDWriter", "prdwriter", "PRDWriter2", "Coder"]),
    policy_id=st.sampled_from(["prdwriter", "PRDWriter", "coder"]),
    version=st.integers(min_value=1, max_value=5),
)
def test_a_policy_signature_verifies_for_its_own_identity_only(
    doer: str, policy_id: str, version: int
) -> None:
    digest = content_digest(POLICY)
    signature = sign(policy_payload(**IDENTITY, content_hash=digest), SIGNER)
    claimed = policy_payload(doer=doer, policy_id=policy_id, version=version, content_hash=digest)
    same = (doer, policy_id, version) == ("PRDWriter", "prdwriter", 3)
    assert verify(claimed, signature, SIGNER.public_key) is same


def test_signature_text_form_round_trips() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    text = str(signature)
    assert text == f"ed25519:{key.key_id}:{signature.value_b64}"
    assert Signature.parse(text) == signature
    assert verify(POLICY, text, key.public_key) is True


def test_signature_rebuilds_from_a_key_id_and_base64_held_apart() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    assert Signature.from_parts(signature.key_id, signature.value_b64) == signature
    with pytest.raises(ValueError, match="not valid base64"):
        Signature.from_parts(signature.key_id, "%%%")


def test_signature_covers_canonical_json_so_key_order_does_not_matter() -> None:
    key = generate_key()
    assert verify(reverse_keys(POLICY), sign(POLICY, key), key.public_key)
    # Ed25519 is deterministic (RFC 8032): same key, same bytes, same signature.
    assert sign(POLICY, key) == sign(reverse_keys(POLICY), key)


def test_signature_verifies_with_the_plain_cryptography_library() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    key.public_key.to_cryptography().verify(signature.value, canonical_json(POLICY))


def test_sign_accepts_a_raw_cryptography_private_key() -> None:
    raw = Ed25519PrivateKey.generate()
    signature = sign(POLICY, raw)
    assert verify(POLICY, signature, raw.public_key())


def test_tampered_artifact_fails_verification() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    tampered = json.loads(json.dumps(POLICY))
    tampered["hyper"]["temperature"] = 0.3
    assert verify(tampered, signature, key.public_key) is False
    tampered = json.loads(json.dumps(POLICY))
    tampered["tools"].append("shell")
    assert verify(tampered, signature, key.public_key) is False


def test_signature_from_another_key_fails_verification() -> None:
    signer, other = generate_key(), generate_key()
    signature = sign(POLICY, signer)
    assert verify(POLICY, signature, other.public_key) is False
    forged = Signature(other.key_id, signature.value)  # right id, wrong signer
    assert verify(POLICY, forged, other.public_key) is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:abc",
        "rsa:0123456789abcdef:AAAA",
        "ed25519:0123456789ABCDEF:" + "A" * 88,
        "ed25519:0123456789abcdef:not base64!",
        "ed25519:0123456789abcdef:AAAA",
    ],
)
def test_malformed_signature_text_verifies_false_and_parse_says_why(text: str) -> None:
    key = generate_key()
    assert verify(POLICY, text, key.public_key) is False
    with pytest.raises(ValueError):
        Signature.parse(text)


def test_verify_returns_false_for_an_artifact_with_no_canonical_form() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    assert verify({"x": math.nan}, signature, key.public_key) is False
    with pytest.raises(CanonicalJSONError):
        sign({"x": math.nan}, key)


def test_verify_raises_only_for_arguments_of_the_wrong_type() -> None:
    key = generate_key()
    signature = sign(POLICY, key)
    with pytest.raises(TypeError):
        verify(POLICY, signature, "not a key")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify(POLICY, 42, key.public_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sign(POLICY, "not a key")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- keyring


def keyring_with(*keys: SigningKey) -> TrustedKeys:
    ring = TrustedKeys()
    for key in keys:
        ring.add(key.public_key, added_at=T0)
    return ring


def test_keyring_verifies_a_known_active_key() -> None:
    key = generate_key()
    result = keyring_with(key).verify(POLICY, sign(POLICY, key))
    assert result.ok and result
    assert result.reason == f"signed by key {key.key_id}"
    assert result.key_id == key.key_id


def test_keyring_refuses_an_unknown_key_id_with_its_id() -> None:
    stranger = generate_key()
    result = keyring_with(generate_key()).verify(POLICY, sign(POLICY, stranger))
    assert not result
    assert result.reason == f"unknown key id {stranger.key_id}"


def test_keyring_says_when_the_artifact_was_changed() -> None:
    key = generate_key()
    result = keyring_with(key).verify({**POLICY, "version": 4}, sign(POLICY, key))
    assert not result
    assert result.reason == "signature does not match the artifact"


def test_keyring_reports_a_malformed_signature() -> None:
    result = keyring_with(generate_key()).verify(POLICY, "garbage")
    assert not result
    assert result.reason.startswith("malformed signature:")


def test_rotated_keys_old_retired_key_still_verifies_and_new_key_signs() -> None:
    old, new = generate_key(), generate_key()
    ring = keyring_with(old)
    v1 = {**POLICY, "version": 1}
    v1_signature = ring.sign(v1, old)

    ring.add(new.public_key, added_at=T0 + dt.timedelta(days=30))
    ring.retire(old.key_id, at=T0 + dt.timedelta(days=31))
    v2 = {**POLICY, "version": 2}
    v2_signature = ring.sign(v2, new)

    old_result = ring.verify(v1, v1_signature)
    assert old_result.ok
    assert "retired key" in old_result.reason
    assert ring.verify(v2, v2_signature).ok
    assert ring.active_key_ids() == [new.key_id]
    # A retired key signs nothing new.
    refusal = ring.check_signing_key(old)
    assert not refusal
    assert "retired" in refusal.reason
    with pytest.raises(KeyNotUsableError, match="retired"):
        ring.sign(v2, old)


def test_retired_key_signature_dated_after_retirement_is_refused() -> None:
    old = generate_key()
    ring = keyring_with(old)
    signature = sign(POLICY, old)
    retired_at = T0 + dt.timedelta(days=10)
    ring.retire(old.key_id, at=retired_at)
    assert ring.verify(POLICY, signature, signed_at=retired_at - dt.timedelta(seconds=1)).ok
    late = ring.verify(POLICY, signature, signed_at=retired_at + dt.timedelta(seconds=1))
    assert not late
    assert f"key {old.key_id} was retired at" in late.reason


def test_revoked_key_never_verifies_and_never_signs() -> None:
    key = generate_key()
    ring = keyring_with(key)
    signature = sign(POLICY, key)
    ring.revoke(key.key_id, at=T0, note="leaked")
    result = ring.verify(POLICY, signature)
    assert not result
    assert result.reason.startswith(f"key {key.key_id} revoked")
    assert not ring.verify(POLICY, signature, signed_at=T0 - dt.timedelta(days=1))
    with pytest.raises(KeyNotUsableError, match="revoked"):
        ring.sign(POLICY, key)


def test_unknown_key_may_not_sign_through_the_keyring() -> None:
    with pytest.raises(KeyNotUsableError, match="unknown key id"):
        keyring_with(generate_key()).sign(POLICY, generate_key())


def test_adding_a_key_twice_keeps_its_state() -> None:
    key = generate_key()
    ring = keyring_with(key)
    ring.revoke(key.key_id)
    entry = ring.add(key.public_key)
    assert entry.revoked and len(ring) == 1


def test_keyring_round_trips_through_json_with_statuses() -> None:
    active, retired, revoked = generate_key(), generate_key(), generate_key()
    ring = keyring_with(active, retired, revoked)
    ring.retire(retired.key_id, at=T0 + dt.timedelta(days=1))
    ring.revoke(revoked.key_id, at=T0 + dt.timedelta(days=2), note="compromised")
    text = ring.to_json()
    assert canonical_json(json.loads(text)) == text
    assert b"PRIVATE" not in text
    back = TrustedKeys.from_json(text)
    assert {k.key_id: k.status for k in back} == {
        active.key_id: "active",
        retired.key_id: "retired",
        revoked.key_id: "revoked",
    }
    assert list(back) == list(ring)
    assert back.to_json() == text


def test_keyring_json_with_a_wrong_key_id_is_refused() -> None:
    key = generate_key()
    document = json.loads(keyring_with(key).to_json())
    document["keys"][0]["key_id"] = "0" * 16
    with pytest.raises(ValueError, match="says key id 0000000000000000"):
        TrustedKeys.from_json(json.dumps(document))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "not valid JSON"),
        ('{"keys": []}', "format"),
        ('{"format": "learnops.keyring/1", "keys": {}}', "must be a list"),
        ('{"format": "learnops.keyring/1", "keys": [{"public_key": 1}]}', "public_key"),
        (
            '{"format": "learnops.keyring/1", "keys": [{"public_key": "'
            + "A" * 43
            + '=", "added_at": "2025-01-01T00:00:00"}]}',
            "no timezone",
        ),
    ],
)
def test_bad_keyring_json_is_refused_with_a_reason(data: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrustedKeys.from_json(data)


def test_keyring_times_must_be_timezone_aware() -> None:
    key = generate_key()
    ring = keyring_with(key)
    with pytest.raises(ValueError, match="timezone-aware"):
        ring.retire(key.key_id, at=dt.datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        ring.verify(POLICY, sign(POLICY, key), signed_at=dt.datetime(2025, 1, 1))


# --------------------------------------------------------------------------- diff


def test_diff_names_additions_changes_and_removals_by_json_path() -> None:
    old = {
        "tools": ["search", "calculator", "browser"],
        "hyper": {"temperature": 0.2, "top_p": 1},
        "prompts": {"system": "Be brief.", "user": "Write a PRD."},
    }
    new = {
        "tools": ["search", "calculator", "browser", "web_search"],
        "hyper": {"temperature": 0.4, "top_p": 1.0},
        "prompts": {"user": "Write a PRD."},
    }
    assert diff_artifacts(old, new) == [
        "~ hyper.temperature: 0.2 → 0.4",
        "- prompts.system = 'Be brief.'",
        "+ tools[3] = 'web_search'",
    ]


def test_diff_of_equal_artifacts_is_empty() -> None:
    assert diff_artifacts(POLICY, reverse_keys(POLICY)) == []
    assert diff_artifacts({"x": 1}, {"x": 1.0}) == []


def test_diff_tells_true_from_one() -> None:
    assert diff_artifacts({"x": True}, {"x": 1}) == ["~ x: true → 1"]


def test_diff_aligns_lists_so_one_insertion_is_one_line() -> None:
    old = {"tools": ["a", "b", "c", "d"]}
    new = {"tools": ["a", "x", "b", "c", "d"]}
    assert diff_artifacts(old, new) == ["+ tools[1] = 'x'"]
    assert diff_artifacts(new, old) == ["- tools[1] = 'x'"]


def test_diff_recurses_into_changed_list_elements() -> None:
    old = {"steps": [{"name": "plan", "timeout": 30}, {"name": "write", "timeout": 60}]}
    new = {"steps": [{"name": "plan", "timeout": 30}, {"name": "write", "timeout": 90}]}
    assert diff_artifacts(old, new) == ["~ steps[1].timeout: 60 → 90"]


def test_diff_shows_type_changes_and_nested_values_as_json() -> None:
    assert diff_artifacts({"a": {"b": 1}}, {"a": [1]}) == ['~ a: {"b":1} → [1]']
    assert diff_artifacts({"a": None}, {"a": "1"}) == ["~ a: null → '1'"]
    assert diff_artifacts({}, {"router": {"rules": []}}) == ['+ router = {"rules":[]}']


def test_diff_quotes_keys_that_are_not_identifiers_and_names_the_root() -> None:
    assert diff_artifacts({"a b": 1}, {"a b": 2}) == ['~ ["a b"]: 1 → 2']
    assert diff_artifacts(1, 2) == ["~ $: 1 → 2"]
    assert diff_artifacts([1], [1, 2]) == ["+ [1] = 2"]


def test_diff_gives_a_unified_diff_for_long_text() -> None:
    old = {"prompts": {"system": "You are a writer.\nBe concise.\nCite sources.\n"}}
    new = {"prompts": {"system": "You are a writer.\nBe thorough.\nCite sources.\n"}}
    assert diff_artifacts(old, new) == [
        "~ prompts.system (text):",
        "    --- a/prompts.system",
        "    +++ b/prompts.system",
        "    @@ -1,3 +1,3 @@",
        "     You are a writer.",
        "    -Be concise.",
        "    +Be thorough.",
        "     Cite sources.",
    ]


def test_diff_cuts_long_values_on_one_line_entries() -> None:
    line = diff_artifacts({}, {"note": "x" * 500})[0]
    assert line.startswith("+ note = 'xxx")
    assert line.endswith("… (500 chars)")
    assert len(line) < 90


def test_diff_is_deterministic_and_in_key_order() -> None:
    old = {"b": 1, "a": 1, "c": 1}
    new = {"c": 2, "a": 2, "b": 2}
    assert diff_artifacts(old, new) == ["~ a: 1 → 2", "~ b: 1 → 2", "~ c: 1 → 2"]
    assert diff_artifacts(reverse_keys(old), new) == diff_artifacts(old, new)


def test_diff_refuses_artifacts_with_no_canonical_form() -> None:
    with pytest.raises(CanonicalJSONError):
        diff_artifacts({"a": 1}, {"a": math.nan})


@given(json_values, json_values)
def test_diff_is_empty_exactly_when_the_content_hashes_are_equal(a: Any, b: Any) -> None:
    assert (diff_artifacts(a, b) == []) == (content_hash(a) == content_hash(b))
    assert diff_artifacts(a, a) == []
