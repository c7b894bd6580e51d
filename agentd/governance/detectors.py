"""The detector table: one regular expression per kind of credential, and its look-alike check.

Each detector names its kind (the placeholder's type, `[REDACTED:<kind>]`),
the policy class it belongs to, its pattern, the group that holds the secret
(what is redacted), and a check that throws out look-alikes (documentation
examples, placeholders, references, numbers failing Luhn or mod-97).

Speed comes from where each pattern starts: with a literal (`AKIA`, `ghp_`,
`-----BEGIN `), which the engine finds by a fast prefix scan and so skips
through text that cannot match (~0.06 ms per 200 KB); a pattern starting with
a character class or an assertion is tried at every position (~1-10 ms).
Hence word boundaries are checked after a match (`edge`), an e-mail address
is found at its "@" and grown to the left (`left`), and the few patterns with
no literal start wait for a literal to occur in the text first (`gates`).

Why our own rules rather than detect-secrets (docs/governance.md has the
figures): its import costs ~93 ms, its regex plugins alone take ~470 ms for a
200 KB prompt (target: 5 ms), its entropy plugins fire on nearly every line
of /etc and /var/log, and its last release is from May 2024.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, NamedTuple


class Detector(NamedTuple):
    kind: str
    cls: str
    pattern: re.Pattern[str]
    group: int  # the part that is the secret: what a redaction replaces
    check: Callable[[str], bool]  # False: a look-alike, not reported
    edge: frozenset[str]  # characters that must not touch the whole match on either side
    gates: tuple[str, ...]  # for patterns without a literal start: one must occur first
    left: frozenset[str]  # the match grows left over these characters (at most 64)


_ALNUM: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_TOKEN: Final = _ALNUM | {"_", "-"}
_NONE: Final = frozenset[str]()


def grow_left(text: str, start: int, left: frozenset[str]) -> int:
    """Where a match found at its middle (an e-mail's "@") really starts."""
    stop = max(0, start - 64)
    while start > stop and text[start - 1] in left:
        start -= 1
    return start


def at_edges(text: str, start: int, end: int, edge: frozenset[str]) -> bool:
    """The match stands alone: no character of `edge` right before or right after it.

    Checked here rather than by a look-behind in the pattern: a pattern that
    starts with a literal is searched for by the engine's fast prefix scan, one
    that starts with an assertion is tried at every position (10x slower).
    """
    return (start == 0 or text[start - 1] not in edge) and (
        end == len(text) or text[end] not in edge
    )


# Values that documentation uses in place of a real secret.
_DOC_MARKERS: Final = (
    "example",
    "xxxxxxxx",
    "your_",
    "your-",
    "<",
    "${",
    "changeme",
    "placeholder",
)
_NOT_VALUES: Final = frozenset(
    {"true", "false", "none", "null", "yes", "no", "on", "off", "required"}
)


def _real(value: str) -> bool:
    lowered = value.lower()
    return not any(marker in lowered for marker in _DOC_MARKERS)


def _real_assignment(value: str) -> bool:
    """An .env value, not a reference to one ($VAR, ${VAR}, a path, a placeholder)."""
    if value.lower() in _NOT_VALUES or value[0] in "$%{*</." or set(value) <= {"*", "x", "X"}:
        return False
    return _real(value)


def _real_url_password(value: str) -> bool:
    return (
        value[0] not in "$%{*<"
        and value.lower() not in {"password", "pass", "secret"}
        and _real(value)
    )


_NOT_BASE64: Final = re.compile(r"[^A-Za-z0-9+/=]+")


def _pem_body(value: str) -> bool:
    """A key block with key material in it, not a header quoted in documentation."""
    body = value.split("-----", 2)[-1]
    return len(_NOT_BASE64.sub("", body)) >= 64 and _real(value)


def _jwt(value: str) -> bool:
    import base64  # only when something looks like a JWT
    import binascii
    import json

    header = value.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


def _luhn(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0 and _card_prefix("".join(map(str, digits)))


def _card_prefix(digits: str) -> bool:
    """Issuer ranges of the common networks (Visa, Mastercard, Amex, Discover, JCB, UnionPay)."""
    two, four = int(digits[:2]), int(digits[:4])
    return (
        digits[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 35, 62, 65)
        or digits.startswith("6011")
    )


def _iban(value: str) -> bool:
    compact = value.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _email(value: str) -> bool:
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    return bool(local) and not (
        domain.startswith("example.") or domain.endswith((".example", ".invalid", ".test"))
    )


def _phone(value: str) -> bool:
    return 8 <= sum(ch.isdigit() for ch in value) <= 15


def _d(
    kind: str,
    cls: str,
    pattern: str,
    check: Callable[[str], bool] = _real,
    *,
    group: int = 0,
    edge: frozenset[str] = _NONE,
    gates: tuple[str, ...] = (),
    left: frozenset[str] = _NONE,
    flags: int = 0,
) -> Detector:
    return Detector(kind, cls, re.compile(pattern, flags), group, check, edge, gates, left)


_ENV_NAME: Final = r"(?:SECRET|PASSWORD|PASSWD|PASS|PWD|TOKEN|API_KEY|APIKEY|PRIVATE_KEY|ACCESS_KEY)(?:_[A-Z0-9]+)*"


def build_detectors() -> tuple[Detector, ...]:
    """Every detector, most specific first: where two overlap, the earlier one wins.

    Each pattern starts with a literal (or a small set of first characters)
    so the engine can skip through text that cannot match.
    """
    return (
        # -- private keys ---------------------------------------------------------------
        _d(
            "gcp-service-account",
            "cloud_key",
            r'"private_key"\s*:\s*"(-----BEGIN [A-Z ]*PRIVATE KEY-----[^"]*)"',
            _pem_body,
            group=1,
        ),
        _d(
            "private-key",
            "private_key",
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END \1PRIVATE KEY(?: BLOCK)?-----|\Z)",
            _pem_body,
            flags=re.DOTALL,
        ),
        # -- cloud provider keys --------------------------------------------------------------
        _d(
            "aws-access-key",
            "cloud_key",
            r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
            edge=_ALNUM,
        ),
        # Two patterns, each with a literal start: one case-insensitive pattern would be
        # tried at every "a" of the text (0.9 ms per 200 KB instead of 0.06).
        *(
            _d(
                "aws-secret-key",
                "cloud_key",
                prefix + r"[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
                group=1,
            )
            for prefix in (r"aws_?secret_?(?:access_?)?key", r"AWS_?SECRET_?(?:ACCESS_?)?KEY")
        ),
        _d(
            "azure-key",
            "cloud_key",
            r"(?:AccountKey|SharedAccessKey)=([A-Za-z0-9+/]{86}==|[A-Za-z0-9+/]{43}=)",
            group=1,
            gates=("Key=",),
        ),
        # -- tokens of common services ------------------------------------------------------
        _d(
            "github-token",
            "service_token",
            r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}",
            edge=_TOKEN,
        ),
        _d("gitlab-token", "service_token", r"glpat-[A-Za-z0-9_-]{20}", edge=_TOKEN),
        _d("slack-token", "service_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", edge=_ALNUM),
        _d(
            "slack-webhook",
            "service_token",
            r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
            edge=_ALNUM,
        ),
        *(
            _d(
                "stripe-key",
                "service_token",
                prefix + r"_(?:live|test)_[A-Za-z0-9]{24,}",
                edge=_ALNUM,
            )
            for prefix in ("sk", "rk")  # literal starts: see aws-secret-key
        ),
        _d(
            "openai-key",
            "service_token",
            r"sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9]{48}",
            edge=_TOKEN,
        ),
        _d("google-api-key", "service_token", r"AIza[0-9A-Za-z_-]{35}", edge=_TOKEN),
        _d(
            "jwt",
            "jwt",
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{10,}",
            _jwt,
            edge=_TOKEN,
        ),
        # -- passwords in URLs and .env assignments -------------------------------------
        _d(
            "url-password",
            "url_password",
            r"://[^\s:/@\"'<>]{1,256}:([^\s/@\"'<>]{1,256})@",
            _real_url_password,
            group=1,
        ),
        _d(
            "env-secret",
            "env_secret",
            # The name's prefix (DB_ in DB_PASSWORD) is not part of the pattern: the
            # search starts at the keyword, and the prefix is never redacted anyway.
            _ENV_NAME + r"[ \t]*=[ \t]*([\"']?)([^\s\"'#]{4,})\1",
            _real_assignment,
            group=2,
        ),
        # -- personal data (off unless a policy asks) ----------------------------------------
        _d(
            "email",
            "email",
            # Found at its "@" (a literal the engine skips to) and grown to the left over
            # the local part: a pattern starting with the local part's character class
            # would be tried at nearly every position (10 ms per 200 KB instead of 1).
            r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
            _email,
            edge=_ALNUM | {".", "%", "+", "-", "_"},
            left=_ALNUM | {".", "%", "+", "-", "_"},
        ),
        _d(
            "phone",
            "phone",
            r"\+[1-9][0-9 .()-]{6,20}[0-9]|\(\d{3}\) ?\d{3}-\d{4}",
            _phone,
            edge=_ALNUM | {"+", "_"},
        ),
        _d(
            "card-number",
            "card_number",
            # 13-19 digits in one run, or grouped as printed (4-4-4-4[-3], Amex 4-6-5);
            # a number that goes on past the groups (an IBAN, an id) is not a card.
            r"(?:[2-6][0-9]{12,18}|[2-6][0-9]{3}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?"
            r"|3[47][0-9]{2}([ -])[0-9]{6}\2[0-9]{5})(?![ -]?[0-9])",
            _luhn,
            edge=_ALNUM,
        ),
        _d(
            "iban",
            "iban",
            r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?",
            _iban,
            edge=_ALNUM,
        ),
    )
