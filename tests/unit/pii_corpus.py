"""A seeded, labelled corpus of PII, secrets and their look-alikes, and its per-kind score.

Test data, not product code: ``tests/unit/test_curation.py`` asserts on it and
``bench/curation.py`` prints the same table.  Every positive is generated so
that it is valid by the rule a real one obeys (libphonenumber's example
numbers, Luhn, mod-97, SSA rules, base64url JSON headers); every negative is
something agent artifacts are full of and a careless detector would redact.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import phonenumbers

from learning.curation import IBAN_LENGTHS, KINDS, Finding, luhn_valid

Gold = tuple[str, int, int]  # (kind, start, end)


@dataclass(frozen=True)
class Labelled:
    """One sentence, the PII it holds (kind and span) and, for look-alikes, what they are."""

    text: str
    gold: tuple[Gold, ...]
    lookalike: str | None = None


@dataclass
class KindScore:
    """Counts for one kind over a corpus."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    exact: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


@dataclass
class CorpusScore:
    """Per-kind scores and which look-alikes were wrongly redacted."""

    kinds: dict[str, KindScore] = field(default_factory=lambda: {k: KindScore() for k in KINDS})
    lookalike_hits: dict[str, int] = field(default_factory=dict)
    lookalike_total: dict[str, int] = field(default_factory=dict)
    misses: list[tuple[str, Gold]] = field(default_factory=list)
    false_alarms: list[tuple[str, Finding]] = field(default_factory=list)


# ------------------------------------------------------------------ positives


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _with_digit(rng: random.Random, alphabet: str, n: int) -> str:
    while True:
        s = _rand(rng, alphabet, n)
        if any(c.isdigit() for c in s):
            return s


ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"
FIRST = ["anna", "bob", "chen", "dmitri", "eva", "farid", "grace", "hiro", "ines", "jamal", "kofi"]
LAST = ["smith", "mueller", "dupont", "sharma", "okafor", "tanaka", "garcia", "rossi", "kowalski"]
DOMAINS = ["example.com", "mail.example.org", "corp.co.uk", "uni-berlin.de", "startup.io", "x.fr"]


def gen_email(rng: random.Random) -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [
            f"{f}.{last}",
            f"{f}_{last}",
            f"{f[0]}{last}{rng.randint(1, 99)}",
            f"{f}+{rng.choice(['ci', 'news'])}",
        ]
    )
    address = f"{local}@{rng.choice(DOMAINS)}"
    return address.upper() if rng.random() < 0.05 else address


PHONE_TYPES = (
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
)
FOREIGN_REGIONS = ("JP", "BR", "AU", "ES", "IT", "CA", "MX", "NL", "ZA", "SG")


def gen_phone(rng: random.Random, regions: tuple[str, ...]) -> str:
    """A valid number near a libphonenumber example, in E.164, international or national form."""
    while True:
        region = rng.choice(regions + FOREIGN_REGIONS)
        example = phonenumbers.example_number_for_type(region, rng.choice(PHONE_TYPES))
        if example is None:
            continue
        national = str(example.national_number)
        tail = "".join(rng.choice(string.digits) for _ in range(3))
        number = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail}", None)
        if not phonenumbers.is_valid_number(number):
            continue
        formats = [
            phonenumbers.PhoneNumberFormat.E164,
            phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        ]
        if region in regions:
            formats.append(phonenumbers.PhoneNumberFormat.NATIONAL)
        return humanise_phone(phonenumbers.format_number(number, rng.choice(formats)), rng)


def unassigned_digits(rng: random.Random) -> str:
    """Six to eight digits that, after a "+", are no valid number of any region: a signed
    count, which possible (unassigned) numbers count as phones only when grouped like one.
    (A count that is a valid number, "+39081649", is one to libphonenumber and to us.)"""
    while True:
        digits = str(rng.randint(100000, 99999999))
        try:
            number = phonenumbers.parse(f"+{digits}", None)
        except phonenumbers.NumberParseException:
            return digits
        if not phonenumbers.is_valid_number(number):
            return digits


def gen_reserved_phone(rng: random.Random) -> str:
    """A number of a range reserved for drama (UK 07700 900xxx, Australia 0491 570xxx), in
    international form: possible for libphonenumber, not valid (kept until 2026-12-08)."""
    tail = f"{rng.randint(0, 999):03d}"
    return rng.choice([f"+44 7700 900{tail}", f"+61 491 570 {tail}", f"+44-7700-900{tail}"])


def humanise_phone(formatted: str, rng: random.Random) -> str:
    """Variations people type: other separators, a "(0)" trunk hint, US dots."""
    roll = rng.random()
    if formatted.startswith("+") and " " in formatted:
        code, rest = formatted.split(" ", 1)
        if roll < 0.15:
            return f"{code}-{rest.replace(' ', '-')}"
        if roll < 0.25 and code in ("+44", "+49", "+33"):
            return f"{code} (0){rest}"
    elif formatted.startswith("(") and roll < 0.4:
        digits = "".join(c for c in formatted if c.isdigit())
        sep = rng.choice([".", "-"])
        return f"{digits[:3]}{sep}{digits[3:6]}{sep}{digits[6:]}"
    return formatted


def gen_ssn(rng: random.Random) -> tuple[str, str]:
    """A valid SSN, and its written form (``ddd-dd-dddd``, ``ddd dd dddd`` or bare after "SSN")."""
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    a, g, s = f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"
    style = rng.random()
    if style < 0.6:
        return f"{a}-{g}-{s}", ""
    if style < 0.85:
        return f"{a} {g} {s}", ""
    return f"{a}{g}{s}", "SSN: "


CARD_BRANDS: tuple[tuple[Callable[[random.Random], str], int], ...] = (
    (lambda r: "4", 16),  # Visa
    (lambda r: "4", 13),
    (lambda r: str(r.randint(51, 55)), 16),  # Mastercard
    (lambda r: str(r.randint(2221, 2720)), 16),
    (lambda r: r.choice(["34", "37"]), 15),  # Amex
    (lambda r: r.choice(["6011", "65"]), 16),  # Discover
    (lambda r: str(r.randint(3528, 3589)), 16),  # JCB
    (lambda r: "36", 14),  # Diners
    (lambda r: "62", 16),  # UnionPay
    (lambda r: "62", 19),
)


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


def format_card(digits: str, rng: random.Random) -> str:
    sep = rng.choice(["", " ", "-"])
    if not sep:
        return digits
    if len(digits) in (14, 15):  # Amex 4-6-5, Diners 4-6-4
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        if len(groups[-1]) < 3:
            return digits
    return sep.join(groups)


def gen_card(rng: random.Random) -> str:
    prefix_of, length = rng.choice(CARD_BRANDS)
    return format_card(luhn_complete(prefix_of(rng), length, rng), rng)


def gen_ipv4(rng: random.Random) -> tuple[str, str]:
    """An address that is neither loopback nor unspecified, and an optional port or prefix."""
    while True:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if rng.random() < 0.3:
            address = ipaddress.IPv4Address(
                rng.choice([0x0A000000, 0xC0A80000, 0xAC100000]) + rng.getrandbits(16)
            )
        if not (address.is_loopback or address.is_unspecified or int(address) >= 0xFF000000):
            break
    suffix = rng.choice(["", "", "", f":{rng.randint(1, 65535)}", f"/{rng.randint(8, 32)}"])
    return str(address), suffix


def gen_ipv6(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.15:
        return f"::ffff:{ipaddress.IPv4Address(rng.getrandbits(32))}"
    while True:
        groups = [rng.getrandbits(16) for _ in range(8)]
        if style < 0.35:
            groups[:4] = [0xFE80, 0, 0, 0]
        elif style < 0.6:
            groups[:2] = [0x2001, 0x0DB8]
            run = rng.randint(1, 4)
            at = rng.randint(2, 7 - run)
            groups[at : at + run] = [0] * run
        value = 0
        for g in groups:
            value = value << 16 | g
        address = ipaddress.IPv6Address(value)
        text = address.exploded if rng.random() < 0.2 else address.compressed
        # Real addresses without a single decimal digit are vanishingly rare;
        # the detector insists on one (see docs/curation.md).
        if any(c.isdigit() for c in text) and not address.is_loopback:
            return text


IBAN_FORMATS = {  # country -> BBAN shape: "n" digit, "a" upper letter, "c" alnum
    "DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 23, "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20, "IT": "a" + "n" * 22, "BE": "n" * 12, "CH": "n" * 17, "AT": "n" * 16,
    "PL": "n" * 24, "SE": "n" * 20, "NO": "n" * 11, "IE": "aaaa" + "n" * 14, "PT": "n" * 21,
    "DK": "n" * 14, "FI": "n" * 14, "SA": "n" * 20, "AE": "n" * 19, "BR": "n" * 23 + "ac",
}  # fmt: skip


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def gen_iban_compact(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    shape = IBAN_FORMATS[country]
    assert len(shape) + 4 == IBAN_LENGTHS[country], country
    pools = {
        "n": string.digits,
        "a": string.ascii_uppercase,
        "c": string.ascii_uppercase + string.digits,
    }
    bban = "".join(rng.choice(pools[c]) for c in shape)
    return country + iban_check_digits(country, bban) + bban


def format_iban(compact: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def gen_api_key(rng: random.Random) -> tuple[str, str]:
    """A well-known credential, or a random secret after ``api_key=``: (prefix, value)."""
    kind = rng.randrange(11)
    if kind == 0:
        return "", "sk-" + rng.choice(["", "proj-"]) + _with_digit(rng, ALNUM, 48)
    if kind == 1:
        return "", "sk-ant-api03-" + _with_digit(rng, B64URL, 80)
    if kind == 2:
        return "", rng.choice(["sk_live_", "sk_test_", "rk_live_"]) + _with_digit(rng, ALNUM, 24)
    if kind == 3:
        return "", rng.choice(["ghp_", "gho_", "ghs_"]) + _with_digit(rng, ALNUM, 36)
    if kind == 4:
        return "", "github_pat_" + _with_digit(rng, ALNUM, 22) + "_" + _rand(rng, ALNUM, 59)
    if kind == 5:
        return "", "AKIA" + _with_digit(rng, string.ascii_uppercase + string.digits, 16)
    if kind == 6:
        return (
            "",
            "xoxb-"
            + f"{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-"
            + _rand(rng, ALNUM, 24),
        )
    if kind == 7:
        return "", "AIza" + _with_digit(rng, B64URL, 35)
    if kind == 8:
        return "", "glpat-" + _with_digit(rng, B64URL, 20)
    if kind == 9:
        return "", "hf_" + _with_digit(rng, ALNUM, 34)
    key_name = rng.choice(
        ["api_key=", "API_KEY: ", '"client_secret": "', "access_token = ", "SECRET_KEY="]
    )
    return key_name, _with_digit(rng, ALNUM, rng.randint(24, 48))


def gen_bearer(rng: random.Random) -> str:
    return _with_digit(rng, B64URL + "~", rng.randint(24, 64))


def gen_jwt(rng: random.Random) -> str:
    header: dict[str, str] = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    if rng.random() < 0.3:
        header = {"typ": "JWT", "kid": _rand(rng, ALNUM, 8), **header}
    payload = {
        "sub": str(rng.randint(1, 10**9)),
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
        "role": "user",
    }
    sig = _b64url(rng.randbytes(rng.choice([32, 64, 256])))
    return ".".join(
        [
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(payload).encode()),
            sig,
        ]
    )


def gen_pem(rng: random.Random) -> str:
    label = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
    body = base64.b64encode(rng.randbytes(rng.choice([121, 400, 1190]))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        f"-----BEGIN {label}PRIVATE KEY-----\n"
        + "\n".join(lines)
        + f"\n-----END {label}PRIVATE KEY-----"
    )


# Password characters: no white space, quotes or markup, nothing that ends a
# sentence, and a letter first (a leading "$" or "{" reads as a template).
PASSWORD_SYMBOLS = "!#$%*+-/=?@^_|~"


def gen_password(rng: random.Random) -> str:
    body = _with_digit(rng, ALNUM + PASSWORD_SYMBOLS, rng.randint(7, 15))
    return rng.choice(string.ascii_letters) + body


def gen_named_secret(rng: random.Random) -> tuple[str, str, str]:
    """A credential after its name: (lead, value, trail)."""
    value = gen_password(rng)
    form = rng.randrange(7)
    if form == 0:
        return "password=", value, ""
    if form == 1:
        return '"password": "', value + rng.choice(["", " and more"]), '"'
    if form == 2:
        return rng.choice(["DB_PASSWORD=", "PGPASSWORD=", "MYSQL_PWD="]), value, ""
    if form == 3:
        return rng.choice(["passwd: ", "passphrase: ", "dbPassword: "]), value, ""
    if form == 4:
        return rng.choice(["client_secret=", "webhook_secret: ", "X-Api-Key: "]), value, ""
    if form == 5:
        return "?user=bob&token=", value, "&page=2"
    return "secret: '", value, "'"


URL_SAFE = ALNUM + "-._~!*+"


def gen_url_credentials(rng: random.Random) -> tuple[str, str, str]:
    scheme = rng.choice(["https", "postgresql", "redis", "amqp", "mongodb+srv", "ftp"])
    user = _rand(rng, string.ascii_lowercase, rng.randint(3, 8))
    password = rng.choice(string.ascii_letters) + _rand(rng, URL_SAFE, rng.randint(5, 14))
    host = rng.choice(["db.example.com", "db.internal:5432", "cache.internal", "example.org"])
    return f"{scheme}://", f"{user}:{password}", f"@{host}/" + _rand(rng, ALNUM, 4)


def gen_basic_auth(rng: random.Random) -> tuple[str, str, str]:
    user = _rand(rng, string.ascii_lowercase, rng.randint(3, 8))
    token = base64.b64encode(f"{user}:{gen_password(rng)}".encode()).decode()
    lead = rng.choice(["Authorization: Basic ", '"Authorization": "Basic ', "authorization=Basic "])
    return lead, token, '"' if lead.endswith('"') else ""


# ------------------------------------------------------------------ look-alikes


def isbn13(rng: random.Random) -> str:
    core = "978" + "".join(rng.choice(string.digits) for _ in range(9))
    check = (10 - sum((1 if i % 2 == 0 else 3) * int(d) for i, d in enumerate(core)) % 10) % 10
    digits = core + str(check)
    return f"{digits[:3]}-{digits[3]}-{digits[4:6]}-{digits[6:12]}-{digits[12]}"


def luhn_failing_16(rng: random.Random) -> str:
    good = luhn_complete(rng.choice(["4", "51", "6011"]), 16, rng)
    bad = good[:-1] + str((int(good[-1]) + rng.randint(1, 9)) % 10)
    return format_card(bad, rng)


def invalid_ssn(rng: random.Random) -> str:
    g, s = f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"
    area = rng.choice(["000", "666", f"9{rng.randint(0, 99):02d}"])
    choice = rng.random()
    if choice < 0.6:
        return f"{area}-{g}-{s}"
    if choice < 0.8:
        return f"{rng.randint(100, 599)}-00-{s}"
    return f"{rng.randint(100, 599)}-{g}-0000"


def bad_iban(rng: random.Random) -> str:
    good = gen_iban_compact(rng)
    check = (int(good[2:4]) + rng.randint(1, 96)) % 97
    bad = good[:2] + f"{check:02d}" + good[4:]
    return format_iban(bad, rng)


def _clock(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


def date_lookalike(rng: random.Random) -> str:
    y, m, d = rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{y}-{m:02d}-{d:02d}",
            f"{m:02d}/{d:02d}/{y}",
            f"{d:02d}.{m:02d}.{y}",
            f"{y}-{m:02d}-{d:02d}T{_clock(rng)}Z",
            f"{y}-{m:02d}-{d:02d} {_clock(rng)}",
        ]
    )


def timestamp_lookalike(rng: random.Random) -> str:
    return rng.choice(
        [
            str(rng.randint(1_500_000_000, 1_800_000_000)),
            str(rng.randint(1_500_000_000_000, 1_800_000_000_000)),
            _clock(rng),
            f"{_clock(rng)}.{rng.randint(0, 999999):06d}",
        ]
    )


LOOKALIKES: dict[str, Callable[[random.Random], str]] = {
    "signed_count": lambda r: r.choice(
        [
            f"+{unassigned_digits(r)} tokens",
            f"delta +{unassigned_digits(r)}",
            f"+{r.randint(1, 9)},{r.randint(100, 999)},{r.randint(100, 999)} users",
            # Added lines of a diff and grouped counts: grouped, but not after a country code.
            f"+{r.randint(2019, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} Fixed login",
            f"+{r.choice([1024, 2048, 4096, 86400])} {r.choice([512, 8192, 3600])}",
        ]
    ),
    "order_number": lambda r: r.choice(
        [
            f"ORD-{r.randint(2019, 2026)}-{r.randint(0, 999999):06d}",
            f"order #{r.randint(1000000, 9999999)}",
            f"PO-{r.randint(10000, 99999)}-{r.randint(10, 99)}",
            f"INV {r.randint(2019, 2026)}/{r.randint(0, 999999):06d}",
            f"ticket JIRA-{r.randint(1000, 99999)}",
            f"reference {r.randint(2019, 2026)}-{r.randint(0, 999999):06d}",
        ]
    ),
    "date": date_lookalike,
    "timestamp": timestamp_lookalike,
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
    "version": lambda r: r.choice(
        [
            f"{r.randint(0, 20)}.{r.randint(0, 20)}.{r.randint(0, 99)}",
            f"v{r.randint(0, 20)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
            f"version {r.randint(1, 20)}.{r.randint(0, 99)}.{r.randint(0, 9)}.{r.randint(0, 250)}",
            f"release {r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 99)}",
            f"Python {r.randint(2, 3)}.{r.randint(0, 13)}.{r.randint(0, 20)}",
            f"build {r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(100, 99999)}",
        ]
    ),
    "isbn": lambda r: r.choice([isbn13(r), "ISBN 0-306-40615-2", "ISBN " + isbn13(r)]),
    "luhn_failing_card": luhn_failing_16,
    "invalid_ssn": invalid_ssn,
    "bad_iban": bad_iban,
    "git_sha": lambda r: r.choice(
        [_rand(r, "0123456789abcdef", 40), "commit " + _rand(r, "0123456789abcdef", 7)]
    ),
    "hex_digest": lambda r: "sha256:" + _rand(r, "0123456789abcdef", 64),
    "mac_address": lambda r: ":".join(f"{r.getrandbits(8):02x}" for _ in range(6)),
    "code": lambda r: r.choice(
        [
            "std::vector<int>",
            "xs[1::2]",
            "Foo::bar()",
            "@app.route('/v1')",
            "pkg@1.2.3",
            "icon@2x.png",
            "user@localhost",
            "max_tokens: 4096",
            "token: YOUR_TOKEN_HERE",
            "api_key=<your-key-here>",
            "sk-learn style estimators",
            "the bearer of bad news",
            "config.prod.yaml",
        ]
    ),
    # Names of credentials that hold none: settings, code, templates, masks, prose.
    "credential_name": lambda r: r.choice(
        [
            "password_min_length: 12",
            "max_tokens=4096",
            "token_count: 17",
            "password = getpass()",
            "def login(user: str, password: str)",
            "token=self.token",
            "password: ${DB_PASSWORD}",
            "api_key: null",
            "secret_santa: bob",
            "password: '********'",
            "token: <redacted>",
            "client_secret=REDACTED",
            "public_key: ssh-ed25519",
            "Authorization: required for admins",
            "https://example.com:8443/path",
            "password=os.environ['DB_PASSWORD']",
        ]
    ),
    "number": lambda r: r.choice(
        [
            f"{r.randint(1, 999)},{r.randint(0, 999):03d},{r.randint(0, 999):03d}",
            f"${r.randint(1, 99)},{r.randint(0, 999):03d}.{r.randint(0, 99):02d}",
            f"port {r.randint(1024, 65535)}",
            f"pid {r.randint(100, 4_000_000)}",
            f"PR #{r.randint(1000, 99999)}",
            f"HTTP {r.choice([200, 404, 500, 503])}",
            f"0x{r.getrandbits(32):08x}",
            f"{r.randint(100000, 99999999)} tokens",
        ]
    ),
    # Decimal fractions, as scores and measurements print them (JSON floats included).
    "decimal": lambda r: r.choice(
        [
            f"0.{r.randint(100000, 999999)}",
            f"{r.randint(1, 99)}.{r.randint(100000, 99999999)}",
            f'"specificity": 0.{r.randint(100000, 999999)}',
            f"p = 0.0{r.randint(10000, 99999)}",
        ]
    ),
    "not_personal_ip": lambda r: r.choice(
        ["127.0.0.1", "0.0.0.0", "255.255.255.0", "255.255.0.0", "::1"]
    ),
}


# ------------------------------------------------------------------ sentences

TEMPLATES = (
    "Please contact {} about the rollout.",
    "The customer wrote from {} and asked for a refund.",
    "- owner: {}\n- status: open",
    '{{"field": "{}", "ok": true}}',
    "Logged value `{}` in the audit trail.",
    "{} was found in the ticket body",
    "Step 3 of the plan failed; the agent echoed ({}) back to the user.",
    "Notes (2024-05-01): saw {}. Will follow up.",
)


def _place(template: str, value: str) -> tuple[str, int]:
    marker = "\x00"
    filled = template.format(marker)
    at = filled.index(marker)
    return filled.replace(marker, value), at


def positive_example(
    rng: random.Random, kind: str, regions: tuple[str, ...]
) -> tuple[str, str, str]:
    """(text before the value, value, text after the value) for one positive of ``kind``."""
    if kind == "EMAIL":
        # Glued to what follows in an id or a note ("…@acme-corp.com-0"): missed until 2026-12-08.
        after = rng.choice(["-0", "--old", "-2024-01"]) if rng.random() < 0.1 else ""
        return "", gen_email(rng), after
    if kind == "PHONE":
        if rng.random() < 0.1:  # a range libphonenumber lists as possible, not assigned
            return "", gen_reserved_phone(rng), ""
        return "", gen_phone(rng, regions), ""
    if kind == "SSN":
        value, lead = gen_ssn(rng)
        return lead, value, ""
    if kind == "CARD":
        return "", gen_card(rng), ""
    if kind == "IPV4":
        address, suffix = gen_ipv4(rng)
        return "", address, suffix
    if kind == "IPV6":
        value = gen_ipv6(rng)
        return ("[", value, "]:443") if rng.random() < 0.2 else ("", value, "")
    if kind == "IBAN":
        return "", format_iban(gen_iban_compact(rng), rng), ""
    if kind == "API_KEY":
        lead, value = gen_api_key(rng)
        return lead, value, '"' if lead.endswith('"') else ""
    if kind == "BEARER_TOKEN":
        return "Authorization: Bearer ", gen_bearer(rng), ""
    if kind == "JWT":
        return rng.choice(["", "Authorization: Bearer ", "id_token="]), gen_jwt(rng), ""
    if kind == "PRIVATE_KEY":
        return "\n", gen_pem(rng), "\n"
    if kind == "SECRET":
        return gen_named_secret(rng)
    if kind == "URL_CREDENTIALS":
        return gen_url_credentials(rng)
    if kind == "BASIC_AUTH":
        return gen_basic_auth(rng)
    raise ValueError(kind)


def build_corpus(
    seed: int = 20240315,
    per_kind: int = 150,
    per_lookalike: int = 60,
    regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN"),
) -> list[Labelled]:
    """Sentences holding one or two positives each, and sentences holding one look-alike each."""
    rng = random.Random(seed)
    corpus: list[Labelled] = []
    for kind in KINDS:
        for _ in range(per_kind):
            pieces = [(kind, *positive_example(rng, kind, regions))]
            if rng.random() < 0.2:  # a second, different kind in the same sentence
                other = rng.choice([k for k in KINDS if k != kind])
                pieces.append((other, *positive_example(rng, other, regions)))
            text, gold = "", []
            for i, (k, lead, value, trail) in enumerate(pieces):
                sentence, at = _place(rng.choice(TEMPLATES), lead + value + trail)
                offset = len(text) + (1 if i else 0)
                text = (text + " " + sentence) if i else sentence
                start = offset + at + len(lead)
                gold.append((k, start, start + len(value)))
            corpus.append(Labelled(text, tuple(gold)))
    for name, make in LOOKALIKES.items():
        for _ in range(per_lookalike):
            sentence, _at = _place(rng.choice(TEMPLATES), make(rng))
            corpus.append(Labelled(sentence, (), lookalike=name))
    return corpus


def score(corpus: Iterable[Labelled], find: Callable[[str], Iterable[Finding]]) -> CorpusScore:
    """Per-kind true/false positives and misses of ``find`` over ``corpus``.

    A finding is a true positive when it has the gold kind and covers the gold
    span (``exact`` counts those whose span is exactly the gold one); any other
    finding is a false positive of its kind, and a gold span left uncovered by
    a finding of its kind is a miss.
    """
    result = CorpusScore()
    for item in corpus:
        found = list(find(item.text))
        matched: set[int] = set()
        for kind, start, end in item.gold:
            hit = next(
                (
                    i
                    for i, f in enumerate(found)
                    if i not in matched and f.kind == kind and f.start <= start and end <= f.end
                ),
                None,
            )
            if hit is None:
                result.kinds[kind].fn += 1
                result.misses.append((item.text, (kind, start, end)))
            else:
                matched.add(hit)
                result.kinds[kind].tp += 1
                if (found[hit].start, found[hit].end) == (start, end):
                    result.kinds[kind].exact += 1
        for i, f in enumerate(found):
            if i not in matched:
                result.kinds[f.kind].fp += 1
                result.false_alarms.append((item.text, f))
        if item.lookalike is not None:
            name = item.lookalike
            result.lookalike_total[name] = result.lookalike_total.get(name, 0) + 1
            if found:
                result.lookalike_hits[name] = result.lookalike_hits.get(name, 0) + 1
    return result


def format_table(result: CorpusScore) -> str:
    """The per-kind precision/recall table and the look-alike false-alarm table, as text."""
    header = (
        f"{'kind':<13} {'gold':>5} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}"
    )
    lines = [header + f" {'exact':>6}"]
    for kind, s in result.kinds.items():
        lines.append(
            f"{kind:<13} {s.tp + s.fn:>5} {s.tp:>5} {s.fp:>4} {s.fn:>4} "
            f"{s.precision:>9.3f} {s.recall:>7.3f} {s.exact / s.tp if s.tp else 1.0:>6.3f}"
        )
    lines.append("")
    lines.append(f"{'look-alike':<18} {'sentences':>9} {'redacted':>8}")
    for name, total in result.lookalike_total.items():
        lines.append(f"{name:<18} {total:>9} {result.lookalike_hits.get(name, 0):>8}")
    return "\n".join(lines)
