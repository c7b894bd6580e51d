"""The governance step of the chat pipeline: one object, three checks, before and after.

    screen()  before anything is stored or sent: the model policy (FORBIDDEN),
              the budgets (BUDGET_EXCEEDED), the secret scan (SECRET_REFUSED);
              findings are recorded (kinds, classes, counts, lines; never values)
    apply()   on the built request: redact the prompt and the history turns,
              set the requested model and the role's output-token cap
    settle()  after the answer: charge its real token counts to the budgets

History turns are redacted on every request, whatever the override said when
they were first sent: `--allow-secrets` lets a secret through for one message,
not for every later request that carries it as context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from agentd.access import Role
from agentd.errors import SecretRefused
from agentd.governance import budgets, policy, store
from agentd.governance.budgets import BudgetLedger
from agentd.governance.scan import Finding, Scanner, Verdict, count_kinds, describe, judge, redact
from agentd.governance.settings import ModelPolicySettings, ScanSettings
from agentd.governance.usage_writer import UsageWriter
from agentd.providers import Answer, GenerationRequest, ProviderSettings, Turn
from agentd.store.database import Database
from agentd.telemetry.metrics import Registry

logger = logging.getLogger(__name__)

MAX_REPORTED = 50  # findings listed in a refusal's details


class Ask(NamedTuple):
    """What the chatting peer asked for beyond its message."""

    role: Role = Role.CHAT
    model: str | None = None
    allow_secrets: bool = False


PLAIN_ASK = Ask()  # a chat with no --model and no --allow-secrets


class Screened(NamedTuple):
    """The gate's decision for one chat, carried from screen() to apply() and settle()."""

    uid: int
    role: Role
    model: str | None
    allow_secrets: bool
    verdict: Verdict

    @property
    def redacted(self) -> dict[str, int]:
        return count_kinds(self.verdict.redacted)


class Gate:
    def __init__(
        self,
        scan: ScanSettings,
        models: ModelPolicySettings,
        gemini: ProviderSettings,
        ledger: BudgetLedger,
        db: Database,
        registry: Registry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scan = scan
        self._models = models
        self._gemini = gemini
        self._ledger = ledger
        self._db = db
        self._clock = clock
        self._scanner = Scanner.for_policy(scan)
        self._usage = UsageWriter(db)
        self._findings = registry.counter(
            "secret_findings_total",
            "Credentials (and personal data) found in prompts, by kind and what was done.",
            ("kind", "action"),
            lifetime=True,
        )
        self._used = registry.gauge(
            "budget_used", "Today's usage of each budget (UTC day).", ("scope", "unit")
        )
        self._limits = registry.gauge(
            "budget_limit", "Each budget's daily cap; 0 = none.", ("scope", "unit")
        )

    @property
    def ledger(self) -> BudgetLedger:
        return self._ledger

    async def restore(self) -> None:
        """Today's usage recorded before this start."""
        day = self._ledger.today()
        self._ledger.restore(day, await self._db.run(store.load_day, day))
        self._publish(self._ledger.statuses(None))

    async def screen(self, request_id: str, prompt: str, uid: int, ask: Ask) -> Screened:
        policy.check_model(self._models, ask.role, ask.model, self._gemini.model)
        self._ledger.check(uid)
        findings = self._scanner.recall(prompt)
        verdict = judge(findings, self._scan, ask.allow_secrets)
        if findings:
            await self._record(request_id, uid, verdict)
        if verdict.refused:
            raise SecretRefused(
                _refusal(verdict.refused, self._scan), found=_found(verdict.refused)
            )
        return Screened(uid, ask.role, ask.model, ask.allow_secrets, verdict)

    def apply(self, request: GenerationRequest, screened: Screened) -> GenerationRequest:
        *history, prompt = request.turns
        turns = [Turn(t.role, self._redact_history(t.text)) for t in history]
        # Judged again on the text as it is sent (a remembered scan: no second cost), so
        # the spans redacted are always this text's own.
        verdict = judge(self._scanner.recall(prompt.text), self._scan, screened.allow_secrets)
        turns.append(Turn(prompt.role, redact(prompt.text, verdict.redacted + verdict.refused)))
        cap = policy.max_output_tokens(self._models, screened.role, self._gemini.max_output_tokens)
        return request._replace(
            system_prompt=self._redact_history(request.system_prompt),  # a session's own, too
            turns=tuple(turns),
            model=screened.model or request.model,
            max_output_tokens=cap,
        )

    async def settle(self, screened: Screened, answer: Answer) -> str | None:
        """Charge the answer's tokens; a warning once a budget passes its warning share."""
        if answer.tokens_in or answer.tokens_out:
            day, added = self._ledger.charge(
                screened.uid, answer.model, answer.tokens_in, answer.tokens_out
            )
            scopes = (budgets.uid_scope(screened.uid), budgets.GLOBAL)
            await self._usage.write(day, scopes, added)
        self._publish(self._ledger.statuses(screened.uid))
        return budgets.warning_text(self._ledger.warnings(screened.uid), self._clock())

    def redact_untrusted(self, text: str) -> str:
        """Text that reaches the model from elsewhere (a tool's result): each secret the
        policy does not allow is redacted, never refused (there is no one to refuse)."""
        return self._redact_history(text)

    def _redact_history(self, text: str) -> str:
        found = [f for f in self._scanner.recall(text) if self._scan.action(f.cls) != "allow"]
        return redact(text, found) if found else text

    async def _record(self, request_id: str, uid: int, verdict: Verdict) -> None:
        rows = [
            (
                request_id,
                self._clock(),
                uid,
                kind,
                cls,
                action,
                len(lines),
                ",".join(map(str, lines)),
            )
            for action, findings in zip(("refuse", "redact", "allow"), verdict, strict=True)
            for (kind, cls), lines in _group(findings).items()
        ]
        for _, _, _, kind, _, action, count, _ in rows:
            self._findings.inc(count, kind=kind, action=action)
        await self._db.run(store.insert_findings, rows)
        logger.info(
            "secrets found in a prompt",
            extra={"findings": {f"{r[3]}:{r[5]}": r[6] for r in rows}},
        )

    def _publish(self, statuses: list[budgets.BudgetStatus]) -> None:
        for s in statuses:
            self._used.set(s.used, scope=s.scope, unit=s.unit)
            self._limits.set(s.limit, scope=s.scope, unit=s.unit)


def _group(findings: tuple[Finding, ...]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for f in findings:
        out.setdefault((f.kind, f.cls), []).append(f.line)
    return out


def _found(findings: tuple[Finding, ...]) -> list[dict[str, object]]:
    return [{"kind": f.kind, "class": f.cls, "line": f.line} for f in findings[:MAX_REPORTED]]


def _refusal(refused: tuple[Finding, ...], settings: ScanSettings) -> str:
    classes = sorted({f.cls for f in refused})
    fixed = [c for c in classes if c not in settings.overridable]
    hint = (
        f"[secrets_scan] refuses {', '.join(fixed)} even with --allow-secrets"
        if fixed
        else "remove them, or send it anyway with `agentctl chat --allow-secrets`"
    )
    return f"the prompt holds secrets that are not sent: {describe(refused)}; nothing was sent ({hint})"
