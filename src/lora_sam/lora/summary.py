"""Parameter counts per SAM part: total and trainable."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "sam_prompt_encoder", "sam_mask_decoder")
"""SAM v1's parts and SAM 2.1's (whose memory modules, unused on images, count as "other")."""


@dataclass(frozen=True)
class PartCount:
    part: str
    total: int
    trainable: int


@dataclass(frozen=True)
class ParameterSummary:
    parts: list[PartCount]

    @property
    def total(self) -> int:
        return sum(p.total for p in self.parts)

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts)

    def rows(self) -> list[tuple[str, int, int, float]]:
        out = [(p.part, p.total, p.trainable, 100.0 * p.trainable / max(p.total, 1)) for p in self.parts]
        out.append(("total", self.total, self.trainable, 100.0 * self.trainable / max(self.total, 1)))
        return out

    def to_markdown(self) -> str:
        lines = ["| part | parameters | trainable | trainable % |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {t:,} | {tr:,} | {pct:.3f} |" for n, t, tr, pct in self.rows()]
        return "\n".join(lines)

    def __str__(self) -> str:
        header = f"{'part':<16}{'parameters':>14}{'trainable':>14}{'trainable %':>13}"
        lines = [header, "-" * len(header)]
        lines += [f"{n:<16}{t:>14,}{tr:>14,}{pct:>13.3f}" for n, t, tr, pct in self.rows()]
        return "\n".join(lines)


def parameter_summary(module: nn.Module) -> ParameterSummary:
    """Total and trainable parameters of each SAM part (or each top-level child) and overall.

    Parameters shared between parts are counted once, under the first part that holds them.
    """
    children = [n for n, _ in module.named_children()]
    parts = [p for p in SAM_PARTS if p in children] or children
    seen: set[int] = set()
    counts = []
    for part in parts + ["other"]:
        params = (module.get_submodule(part).parameters() if part != "other" else module.parameters())
        total = trainable = 0
        for p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        if part != "other" or total:
            counts.append(PartCount(part, total, trainable))
    return ParameterSummary(counts)
