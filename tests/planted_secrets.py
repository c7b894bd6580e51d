"""Planted credentials and look-alikes for the secret scanner's tests and bench.

Every value is made up, and built by concatenation at run time so this file
holds no string a repository scanner would take for a live credential.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Final

_rng = random.Random(17)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _chars(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _pem(label: str) -> str:
    body = base64.b64encode(_rng.randbytes(600)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


def _b64url(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


_GCP_KEY = _pem("PRIVATE" + " KEY")

# kind -> (text that carries it, the secret value itself: what must never reach Gemini)
PLANTED: Final[dict[str, tuple[str, str]]] = {}


def _plant(kind: str, value: str, template: str = "{}") -> None:
    PLANTED[kind] = (template.format(value), value)


_plant("private-key", _pem("RSA PRIVATE" + " KEY"), "server.key:\n{}\n")
_plant("openssh-private-key", _pem("OPENSSH PRIVATE" + " KEY"), "id_ed25519:\n{}\n")
_plant(
    "aws-access-key",
    "AKIA" + _chars(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
    "aws_access_key_id = {}",
)
_plant("aws-secret-key", _chars(40, _ALNUM + "/+"), "aws_secret_access_key = {}")
_plant(
    "gcp-service-account",
    _GCP_KEY,
    "",
)
PLANTED["gcp-service-account"] = (
    json.dumps(
        {
            "type": "service_" + "account",
            "project_id": "demo-project",
            "private_key_id": _chars(40, "0123456789abcdef"),
            "private_key": _GCP_KEY + "\n",
            "client_email": "svc@demo-project.iam.gserviceaccount.com",
        },
        indent=2,
    ),
    _GCP_KEY.splitlines()[1],  # a line of the key material, as it appears JSON-escaped
)
_plant(
    "azure-key",
    _chars(86, _ALNUM + "+/") + "==",
    "DefaultEndpointsProtocol=https;AccountName=demo;Account"
    + "Key={};EndpointSuffix=core.windows.net",
)
_plant("github-token", "gh" + "p_" + _chars(36), "GH_AUTH={} # for the CI")
_plant("gitlab-token", "gl" + "pat-" + _chars(20), "token: {}")
_plant("slack-token", "xo" + "xb-" + _chars(11, "0123456789") + "-" + _chars(24), "slack {}")
_plant(
    "slack-webhook",
    "https://hooks.slack.com/services/T"
    + _chars(8, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + "/B"
    + _chars(8, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + "/"
    + _chars(24),
    "webhook: {}",
)
_plant("stripe-key", "sk" + "_live_" + _chars(24), "stripe.api_key = '{}'")
_plant("openai-key", "sk-" + "proj-" + _chars(40) + "T3Blbk" + "FJ" + _chars(40), "OPENAI {}")
_plant("google-api-key", "AI" + "za" + _chars(35, _ALNUM + "_-"), "maps key {}")
_plant(
    "jwt",
    _b64url({"alg": "HS256", "typ": "JWT"})
    + "."
    + _b64url({"sub": "1234567890", "name": "Ann"})
    + "."
    + _chars(43, _ALNUM + "_-"),
    "Authorization: Bearer {}",
)
_plant("url-password", "Pa55" + _chars(10), "DATABASE_URL postgres://app:{}@db.internal:5432/app")
_plant("env-secret", "hunter2" + _chars(8), "export DB_PASS" + "WORD={}")
_plant("email", "ann.lee@" + "corp-mail.io", "contact: {}")
_plant("phone", "+44 20 7946 0958", "call {} now")
_plant("card-number", "4111 1111 1111 1111", "paid with {} yesterday")
_plant("iban", "DE89 3704 0044 0532 0130 00", "IBAN: {}")

# Text that looks like a credential to a careless rule and is not one: none must fire.
LOOK_ALIKES: Final[dict[str, str]] = {
    "uuid": "request 123e4567-e89b-12d3-a456-426614174000 done; trace 9b2c1f0e-5d3a-4c7b-8e9f-0a1b2c3d4e5f",
    "hashes": (
        "commit 3f5e1b9c2d7a8e6f4b0c1d2e3f4a5b6c7d8e9f0a\n"
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        'md5 d41d8cd98f00b204e9800998ecf8427e etag "5d41402abc4b2a76b9719d911017c592"'
    ),
    "base64-image": '<img src="data:image/png;base64,'
    + base64.b64encode(b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(30_000)).decode()
    + '">',
    "aws-doc-example": "aws_access_key_id = AKIAIOSFODNN7" + "EXAMPLE\n"
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
    "pem-in-docs": "Paste your key between -----BEGIN PRIVATE KEY----- and -----END PRIVATE KEY-----.",
    "env-references": (
        "DB_PASSWORD=${DB_PASSWORD}\nPASSWORD_FILE=/run/secrets/db\nAPI_TOKEN=<your token>\n"
        "SECRET_KEY=changeme\nUSE_TOKEN=true\nTOKENIZER=bpe"
    ),
    "url-without-password": "https://user@example.org/x and postgres://app:${PGPASSWORD}@db/app http://[::1]:8080/",
    "jwt-shaped": "eyJub3QganNvbiBhdCBhbGw.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmn",
    "numbers": "order 4111 1111 1111 1112 id 1234567890123456 ts 1733212800123 port 8080",
    "bad-iban": "DE89 3704 0044 0532 0130 01",
    "doc-email": "write to someone@example.com",
    "log-line": "Dec  3 17:15:29 host sshd[1234]: Accepted publickey for root from 10.0.0.5 port 52100 "
    "ssh2: ED25519 SHA256:AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcd",
}
