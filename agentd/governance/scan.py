"""Find credentials in text, decide per policy class, and redact.

    scan(text)                        -> findings (kind, class, line, span); never the value
    judge(findings, settings, override) -> Verdict: what to refuse, redact, let through
    redact(text, findings)            -> text with each secret replaced by [REDACTED:<kind>]

Findings carry offsets and line numbers so a refusal can say where a secret
is without repeating it. Overlapping matches keep the earlier detector's
(the more specific one: a GCP service-account key before a bare PEM block).
"""

from __future__ import annotations

import functools
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from agentd.governance.detectors import Detector, at_edges, build_detectors, grow_left
from agentd.governance.settings import CLASSES, ScanSettings


class Finding(NamedTuple):
    kind: str  # e.g. aws-access-key: the placeholder's type
    cls: str  # the policy class, e.g. cloud_key
    line: int  # 1-based line of the secret's first character
    start: int  # the secret's span in the text (what a redaction replaces)
    end: int


class Verdict(NamedTuple):
    refused: tuple[Finding, ...]
    redacted: tuple[Finding, ...]
    allowed: tuple[Finding, ...]


@functools.cache
def _detectors(classes: frozenset[str]) -> tuple[Detector, ...]:
    """The detectors of these classes, compiled on first use (not on the way to READY)."""
    return tuple(d for d in build_detectors() if d.cls in classes)


MEMO_CHARS = 4_000_000  # text whose findings are remembered (history is sent again each chat)


class Scanner:
    """Runs the detectors of the classes a policy cares about."""

    def __init__(self, classes: Iterable[str] = CLASSES, *, memo_chars: int = MEMO_CHARS) -> None:
        self._classes = frozenset(classes)
        self._memo_limit = memo_chars
        self._memo: OrderedDict[str, tuple[Finding, ...]] = OrderedDict()
        self._memo_chars = 0

    @classmethod
    def for_policy(cls, settings: ScanSettings) -> Scanner:
        """Classes whose action is `allow` are not looked for: nothing would change."""
        if not settings.enabled:
            return cls(())
        return cls(c for c in CLASSES if settings.action(c) != "allow")

    @property
    def classes(self) -> frozenset[str]:
        return self._classes

    @property
    def remembered_chars(self) -> int:
        return self._memo_chars

    def recall(self, text: str) -> tuple[Finding, ...]:
        """scan(), remembering the findings of recent texts.

        Every chat sends the session's history again, so the same turns are
        scanned over and over: a dictionary lookup (a hash and one comparison,
        in C) replaces a dozen regular-expression searches per turn. Keyed by
        the text itself, so a hit is exact. The oldest texts are forgotten
        once `memo_chars` characters are held.
        """
        found = self._memo.get(text)
        if found is not None:
            self._memo.move_to_end(text)
            return found
        found = self.scan(text)
        self._memo[text] = found
        self._memo_chars += len(text)
        while self._memo_chars > self._memo_limit and self._memo:
            oldest, _ = self._memo.popitem(last=False)
            self._memo_chars -= len(oldest)
        return found

    def scan(self, text: str) -> tuple[Finding, ...]:
        spans: list[tuple[int, int, Detector]] = []
        for detector in _detectors(self._classes):
            if detector.gates and not any(gate in text for gate in detector.gates):
                continue
            for match in detector.pattern.finditer(text):
                span = _span(text, match, detector)
                if span is not None and not _overlaps(spans, *span):
                    spans.append((*span, detector))
        spans.sort(key=lambda s: s[0])
        return tuple(_findings(text, spans))


def _span(text: str, match: re.Match[str], detector: Detector) -> tuple[int, int] | None:
    """The secret's span, or None for a look-alike (not alone at its edges, or its
    value fails the detector's check)."""
    start, end = match.span()
    if detector.left:
        start = grow_left(text, start, detector.left)
    if detector.edge and not at_edges(text, start, end, detector.edge):
        return None
    if detector.left:
        return (start, end) if detector.check(text[start:end]) else None
    return match.span(detector.group) if detector.check(match[detector.group]) else None


def _overlaps(spans: Sequence[tuple[int, int, Detector]], start: int, end: int) -> bool:
    return any(start < e and s < end for s, e, _ in spans)


def _findings(text: str, spans: list[tuple[int, int, Detector]]) -> Iterator[Finding]:
    """Findings in text order, counting newlines once through the text, not per finding."""
    line, counted = 1, 0
    for start, end, detector in spans:
        line += text.count("\n", counted, start)
        counted = start
        yield Finding(detector.kind, detector.cls, line, start, end)


def judge(findings: Sequence[Finding], settings: ScanSettings, override: bool) -> Verdict:
    """Sort findings by what the policy says; `override` (chat --allow-secrets) lets the
    overridable classes through for this one message."""
    out: dict[str, list[Finding]] = {"refuse": [], "redact": [], "allow": []}
    for finding in findings:
        action = settings.action(finding.cls)
        if override and finding.cls in settings.overridable:
            action = "allow"
        out[action].append(finding)
    return Verdict(tuple(out["refuse"]), tuple(out["redact"]), tuple(out["allow"]))


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span by a typed placeholder (spans must not overlap)."""
    pieces: list[str] = []
    position = 0
    for finding in sorted(findings, key=lambda f: f.start):
        pieces.append(text[position : finding.start])
        pieces.append(f"[REDACTED:{finding.kind}]")
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces)


def count_kinds(findings: Iterable[Finding]) -> dict[str, int]:
    return dict(Counter(f.kind for f in findings))


def describe(findings: Sequence[Finding], limit: int = 10) -> str:
    """'aws-access-key on line 3, private-key on line 10': where, never what."""
    lines: dict[str, list[int]] = {}
    for finding in findings:
        lines.setdefault(finding.kind, []).append(finding.line)
    parts = [
        f"{kind} on line{'s' if len(at) > 1 else ''} {', '.join(map(str, at[:limit]))}"
        + (f" (and {len(at) - limit} more)" if len(at) > limit else "")
        for kind, at in lines.items()
    ]
    return "; ".join(parts)
