"""Measurements as data: repeated runs summarised as median and min–max, judged on the median."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Op = Literal[">=", "<="]


@dataclass
class Metric:
    name: str
    unit: str
    runs: list[float]
    target: float | None = None
    op: Op | None = None
    target_text: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.op is None or not self.runs:
            return None
        return self.median >= self.target if self.op == ">=" else self.median <= self.target

    def shortfall(self) -> float:
        """How far the median is from the target: above 1 fails, the larger the worse."""
        if self.target is None or self.op is None or not self.runs:
            return 0.0
        m = self.median
        if self.target == 0:
            return 0.0 if self.passed else float("inf")
        if self.op == ">=":
            return self.target / m if m > 0 else float("inf")
        return m / self.target if self.target > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median=self.median, min=min(self.runs) if self.runs else None,
                    max=max(self.runs) if self.runs else None, passed=self.passed)
        return data


@dataclass
class Measurement:
    id: str
    title: str
    method: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def shortfall(self) -> float:
        return max((m.shortfall() for m in self.metrics), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "method": self.method,
                "metrics": [m.as_dict() for m in self.metrics], "notes": self.notes,
                "details": self.details}
