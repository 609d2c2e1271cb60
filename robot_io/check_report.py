"""The findings of `pi0edge check` (contract_check.py, device_check.py): each names the field it is about and
is pass, fail, warn (legal but probably not meant) or unknown (the bundle or the machine cannot say)."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("pass", "fail", "warn", "unknown")


@dataclass(frozen=True)
class Finding:
    field: str
    status: str
    message: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)

    def add(self, field_name: str, status: str, message: str) -> None:
        self.findings.append(Finding(field_name, status, message))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        width = max((len(f.field) for f in self.findings), default=5)
        lines = [f"{f.status.upper():7} {f.field:{width}}  {f.message}" for f in self.findings]
        lines.append(f"check: {'passed' if self.ok else 'FAILED'} ({len(self.failures)} failed, "
                     f"{sum(f.status == 'unknown' for f in self.findings)} unknown)")
        return "\n".join(lines)

    def refusal(self) -> str:
        return "; ".join(f"{f.field}: {f.message}" for f in self.failures)

    def to_json(self) -> dict:
        return {"ok": self.ok, "findings": [vars(f) for f in self.findings]}
