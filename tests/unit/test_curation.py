"""Redaction precision and recall on a generated, labelled corpus; labels; the dedup key."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning import curation
from learning.curation import (
    DEFAULT_PHONE_REGIONS,
    KINDS,
    PLACEHOLDERS,
    Finding,
    Redactor,
    SampleLabels,
    contains_pii,
    content_hash,
    findings_only,
    iban_checksum_valid,
    label_sample,
    luhn_valid,
    redact,
    specificity,
)
from tests.unit.pii_corpus import CorpusScore, Labelled, build_corpus, format_table, score

MIN_PRECISION = 0.95
MIN_RECALL = 0.95
MIN_EXACT_SPAN = 0.98
MAX_LOOKALIKE_REDACTED = 0.05


@pytest.fixture(scope="module")
def corpus() -> list[Labelled]:
    return build_corpus(seed=20240315, per_kind=150, per_lookalike=60)


@pytest.fixture(scope="module")
def corpus_score(corpus: list[Labelled]) -> CorpusScore:
    result = score(corpus, findings_only)
    print("\n" + format_table(result))
    return result


# ------------------------------------------------------------------ the corpus


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_found_with_high_precision_and_recall(
    corpus_score: CorpusScore, kind: str
) -> None:
    s = corpus_score.kinds[kind]
    assert s.tp + s.fn >= 100, f"corpus holds too few {kind} examples to measure"
    misses = [t for t, g in corpus_score.misses if g[0] == kind][:3]
    alarms = [(t[f.start : f.end], t) for t, f in corpus_score.false_alarms if f.kind == kind][:3]
    assert s.recall >= MIN_RECALL, f"{kind} recall {s.recall:.3f}; missed in e.g. {misses}"
    assert s.precision >= MIN_PRECISION, f"{kind} precision {s.precision:.3f}; e.g. {alarms}"


@pytest.mark.parametrize("kind", KINDS)
def test_findings_span_exactly_the_pii_in_the_original_text(
    corpus_score: CorpusScore, kind: str
) -> None:
    s = corpus_score.kinds[kind]
    assert s.exact / s.tp >= MIN_EXACT_SPAN


def test_lookalikes_are_left_alone(corpus_score: CorpusScore) -> None:
    for name, total in corpus_score.lookalike_total.items():
        hits = corpus_score.lookalike_hits.get(name, 0)
        assert hits / total <= MAX_LOOKALIKE_REDACTED, f"{name}: {hits} of {total} redacted"


def test_findings_are_ordered_disjoint_and_inside_the_original(corpus: list[Labelled]) -> None:
    for item in corpus:
        previous_end = 0
        for f in redact(item.text).findings:
            assert previous_end <= f.start < f.end <= len(item.text)
            previous_end = f.end


def test_redaction_is_idempotent(corpus: list[Labelled]) -> None:
    for item in corpus:
        once = redact(item.text)
        assert redact(once.text).findings == (), once.text


def test_placeholders_are_typed_and_the_values_are_gone(corpus: list[Labelled]) -> None:
    for item in corpus:
        result = redact(item.text)
        for kind in KINDS:
            found = sum(f.kind == kind for f in result.findings)
            assert result.text.count(PLACEHOLDERS[kind]) == found
        for f in result.findings:
            value = item.text[f.start : f.end]
            if len(value) >= 8:
                assert value not in result.text


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Nd", "Cs"),
            # A password after its name may be all letters, so ":" and "=" go too.
            blacklist_characters="@:=0123456789",
        ),
        max_size=400,
    )
)
def test_text_without_digits_at_signs_or_assignments_is_unchanged(text: str) -> None:
    assert redact(text).text == text
    assert not contains_pii(text)


# ------------------------------------------------------------------ named cases

LOOKALIKES = [
    "Order ORD-2024-000123 shipped.",
    "See order #5551234 for details.",
    "Released on 2024-03-15 and 03/15/2024 and 15.03.2024.",
    "Trace 550e8400-e29b-41d4-a716-446655440000 finished.",
    "Upgraded from 1.2.3 to v10.0.1.4 (version 4.18.0.147).",
    "ISBN 978-3-16-148410-0 is on the shelf.",
    "Card-like 4111 1111 1111 1112 fails Luhn.",
    "Bad SSNs: 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000.",
    "IBAN DE88 3704 0044 0532 0130 00 has a bad checksum.",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b at 1710512345 (12:30:45).",
    "Loopback 127.0.0.1, ::1 and mask 255.255.255.0 are not personal.",
    "std::vector<int> xs; ys = xs[1::2]; MAC 00:1a:2b:3c:4d:5e",
    "token: YOUR_TOKEN_HERE, max_tokens: 4096, bearer of bad news",
    "icon@2x.png and pkg@1.2.3 and @app.route('/v1')",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_named_lookalike_is_not_redacted(text: str) -> None:
    assert findings_only(text) == []


POSITIVES = [
    ("Write to jane.doe+ci@example.co.uk today.", "EMAIL", "jane.doe+ci@example.co.uk"),
    ("Call (201) 555-0123 now.", "PHONE", "(201) 555-0123"),
    ("Ruf an: +49 30 123456.", "PHONE", "+49 30 123456"),
    ("Appelez le 06 12 34 56 78.", "PHONE", "06 12 34 56 78"),
    ("SSN 123-45-6789 on file.", "SSN", "123-45-6789"),
    ("ssn: 123456789", "SSN", "123456789"),
    ("Card 4111 1111 1111 1111 charged.", "CARD", "4111 1111 1111 1111"),
    ("Amex 3782-822463-10005.", "CARD", "3782-822463-10005"),
    ("From 203.0.113.7:8443 today.", "IPV4", "203.0.113.7"),
    ("From [2001:db8::8a2e:370:7334]:443.", "IPV6", "2001:db8::8a2e:370:7334"),
    ("Pay GB82 WEST 1234 5698 7654 32 now.", "IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "API_KEY", "AKIAIOSFODNN7EXAMPLE"),
]


@pytest.mark.parametrize(("text", "kind", "value"), POSITIVES)
def test_named_positive_is_redacted(text: str, kind: str, value: str) -> None:
    found = findings_only(text)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [(kind, value)]


def test_bearer_tokens_shorter_than_sixteen_characters_are_left_outside_a_header() -> None:
    # RFC 6750's example token; real tokens are far longer, prose "bearer x" is not.
    assert findings_only("the courier is the Bearer mF_9.B5f-4.1JqM") == []


def test_any_bearer_token_in_an_authorization_header_is_redacted() -> None:
    # In the header the scheme says what it is: no length or composition rule.
    assert redact("Authorization: Bearer mF_9.B5f-4.1JqM").text == (
        "Authorization: Bearer [BEARER_TOKEN]"
    )


def test_bearer_keeps_the_scheme_and_replaces_the_token() -> None:
    result = redact("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0")
    assert result.text == "Authorization: Bearer [BEARER_TOKEN]"


def test_a_jwt_after_bearer_is_labelled_jwt() -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert redact(f"Authorization: Bearer {jwt}").text == "Authorization: Bearer [JWT]"


def test_three_dotted_base64_segments_without_alg_are_not_a_jwt() -> None:
    assert findings_only("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJl") == []


def test_a_truncated_private_key_is_redacted_to_its_last_body_line() -> None:
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIB"
    text = f"key:\n-----BEGIN PRIVATE KEY-----\n{body}\n\nnext"
    assert redact(text).text == "key:\n[PRIVATE_KEY]\n\nnext"


CREDENTIALS = [
    ("password=Hunter2Secret!", "password=[SECRET]"),
    ("DB_PASSWORD=letmein and go", "DB_PASSWORD=[SECRET] and go"),
    ('{"password": "p@ss w0rd, really", "user": "x"}', '{"password": "[SECRET]", "user": "x"}'),
    ("dbPassword: Tr0ub4dor&3", "dbPassword: [SECRET]"),
    ("GET /x?token=abc123&page=2", "GET /x?token=[SECRET]&page=2"),
    ("(passwd=abc123) ok.", "(passwd=[SECRET]) ok."),
    ("X-Api-Key: abcdef123", "X-Api-Key: [SECRET]"),
    (
        "postgresql://app:Hunter2Secret!@db.example.com:5432/app",
        "postgresql://[URL_CREDENTIALS]@db.example.com:5432/app",
    ),
    ("https://:s3cr%40t@host.example/x", "https://[URL_CREDENTIALS]@host.example/x"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [BASIC_AUTH]"),
    ('"authorization": "Basic dXNlcjpwYXNz"', '"authorization": "Basic [BASIC_AUTH]"'),
    (
        'Proxy-Authorization: Digest username="Mufasa", response="6629fae4"',
        "Proxy-Authorization: Digest [SECRET]",
    ),
]


@pytest.mark.parametrize(("text", "redacted"), CREDENTIALS)
def test_credentials_by_name_in_urls_and_headers_are_redacted(text: str, redacted: str) -> None:
    assert redact(text).text == redacted
    assert redact(redacted).findings == ()


NOT_CREDENTIALS = [
    "password_min_length: 12",
    "max_tokens=4096, input_tokens: 17",
    "password = getpass()",
    "def login(user: str, password: str) -> None",
    "token=self.token",
    "password: ${DB_PASSWORD}",
    "api_key: null",
    "password: '********'",
    "ssh access via https://example.com:8443/path",
    "Authorization: required for admins",
]


@pytest.mark.parametrize("text", NOT_CREDENTIALS)
def test_names_of_credentials_without_a_value_are_left(text: str) -> None:
    assert findings_only(text) == []


def test_api_key_in_context_is_redacted_but_the_key_name_kept() -> None:
    assert redact("api_key=Zx9fK2mQ7pL4vR8sT1wY6bN3cD5hJ0gE").text == "api_key=[API_KEY]"
    assert redact('"client_secret": "Zx9fK2mQ7pL4vR8sT1wY6bN3cD5hJ0gE"').text == (
        '"client_secret": "[API_KEY]"'
    )


def test_four_part_version_in_context_is_not_an_ip_but_a_bare_quad_is() -> None:
    assert findings_only("release 2.0.1.3") == []
    assert [f.kind for f in findings_only("host 2.0.1.3 answered")] == ["IPV4"]


def test_bare_digit_phone_needs_phone_context() -> None:
    assert findings_only("run 4155552671 finished") == []
    assert [f.kind for f in findings_only("call me on 4155552671")] == ["PHONE"]


def test_overlapping_candidates_resolve_to_the_longest() -> None:
    text = "mail 5551234567@example.com"
    assert [(f.kind, text[f.start : f.end]) for f in findings_only(text)] == [
        ("EMAIL", "5551234567@example.com")
    ]


def test_redactor_regions_are_configurable_and_checked() -> None:
    assert Redactor(phone_regions=("JP",)).findings("電話 03-1234-5678") != []
    assert DEFAULT_PHONE_REGIONS[0] == "US"
    with pytest.raises(ValueError, match="XX"):
        Redactor(phone_regions=("XX",))


def test_validators() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_checksum_valid("GB82WEST12345698765432")
    assert not iban_checksum_valid("GB83WEST12345698765432")


def test_redaction_counts_by_kind() -> None:
    result = redact("a@b.example and c@d.example, SSN 123-45-6789")
    assert result.counts == {"EMAIL": 2, "SSN": 1}
    assert all(isinstance(f, Finding) for f in result.findings)


# ------------------------------------------------------------------ dedup key


def test_content_hash_is_sha256_of_nfc_text() -> None:
    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert content_hash(composed) == content_hash(decomposed)
    assert content_hash("a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    assert content_hash("a") != content_hash("a ")


# ------------------------------------------------------------------ labels


def _labels(**overrides: Any) -> SampleLabels:
    args: dict[str, Any] = {
        "text": "Set `max_retries` to 3 in config.yaml for the PRDWriter doer.",
        "grounding_score": 0.75,
        "contradiction_count": 1,
        "claim_count": 4,
        "gates_passed": 9,
        "gates_failed": 1,
        "artifact_origin": "ai-generated",
        "produced_by_our_policy": False,
    }
    args.update(overrides)
    return label_sample(**args)


def test_labels_follow_the_documented_rules() -> None:
    labels = _labels()
    assert labels.grounding == 0.75
    assert labels.contradiction == 0.25
    assert labels.correctness == 0.9
    assert labels.origin == "ai-generated"
    assert labels.synthetic_confidence == 0.9
    assert 0.0 < labels.specificity <= 1.0


def test_labels_when_nothing_was_measured() -> None:
    labels = _labels(grounding_score=None, claim_count=0, contradiction_count=0, gates_passed=0,
                     gates_failed=0)  # fmt: skip
    assert labels.grounding is None
    assert labels.contradiction == 0.0
    assert labels.correctness is None


def test_contradictions_beyond_claims_cap_at_one() -> None:
    assert _labels(contradiction_count=7, claim_count=3).contradiction == 1.0


@pytest.mark.parametrize(
    ("origin", "ours", "matches", "expected_origin", "expected_conf"),
    [
        ("ai-generated", True, False, "ai-generated", 1.0),
        ("ai-generated", False, False, "ai-generated", 0.9),
        ("hybrid", False, False, "hybrid", 0.5),
        ("human", False, False, "human", 0.0),
        ("human", True, False, "hybrid", 0.5),
        ("human", False, True, "human", 0.8),
    ],
)
def test_origin_and_synthetic_confidence(
    origin: str, ours: bool, matches: bool, expected_origin: str, expected_conf: float
) -> None:
    labels = _labels(
        artifact_origin=origin, produced_by_our_policy=ours, matches_our_output=matches
    )
    assert labels.origin == expected_origin
    assert labels.synthetic_confidence == expected_conf


@pytest.mark.parametrize(
    "bad",
    [
        {"grounding_score": 1.4},
        {"grounding_score": float("nan")},
        {"claim_count": -1},
        {"gates_failed": -2},
        {"artifact_origin": "robot"},
    ],
)
def test_labels_reject_bad_input_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        _labels(**bad)


def test_specificity_prefers_concrete_text() -> None:
    vague = "We should make things better and improve the overall quality of the work soon. " * 3
    concrete = (
        "Raise `pool_size` from 10 to 40 in storage/pool.py; p95 latency fell from 412 ms to "
        "180 ms on 2024-03-15 after PR 2211 merged, per the Grafana panel db_conn_wait."
    )
    assert specificity(concrete) > specificity(vague)
    assert specificity("") == 0.0
    assert specificity("[EMAIL] [PHONE] [EMAIL]") == 0.0
    assert specificity("42") < specificity(" ".join(["42"] * 40)) == 1.0


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_specificity_is_in_the_unit_interval(text: str) -> None:
    assert 0.0 <= specificity(text) <= 1.0


_CREDENTIAL_TEXT = st.text(
    alphabet=st.sampled_from(list("aeiknoprstwyAEKNPSTWY_-:= \t'\"\n0123456789/.+")), max_size=80
).map(lambda noise: noise.replace("w", "Password").replace("K", "API-key").replace("y", "Token="))


def _assert_folded_spans_equal(text: str) -> None:
    for pattern, folded in (
        (curation._CREDENTIAL_NAME, curation._CREDENTIAL_NAME_FOLDED),
        (curation._KEY_CONTEXT, curation._KEY_CONTEXT_FOLDED),
    ):
        expected = [m.regs for m in pattern.finditer(text)]
        assert [m.regs for m in curation._finditer_folded(pattern, folded, text)] == expected


@settings(max_examples=300, deadline=None)
@given(_CREDENTIAL_TEXT)
def test_folded_patterns_find_the_spans_of_the_case_insensitive_ones(text: str) -> None:
    _assert_folded_spans_equal(text)


def test_folded_patterns_agree_on_the_labelled_corpus(corpus: list[Labelled]) -> None:
    for example in corpus:
        _assert_folded_spans_equal(example.text)
