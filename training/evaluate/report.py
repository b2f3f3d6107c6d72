"""Robustness reports: JSON for machines, Markdown for people, a PNG bar chart for both."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AttackResult:
    label: str
    attack: str
    params: dict
    logit_scale: float
    white_box: bool
    robust_accuracy: float
    max_linf: float
    seconds: float


@dataclass(frozen=True)
class Report:
    name: str
    n: int
    clean_accuracy: float
    attacks: list[AttackResult] = field(default_factory=list)
    worst_case_accuracy: float = 0.0
    gradient_masking_suspected: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def card(self) -> dict:
        """The short summary a bundle manifest carries as its robustness card."""
        return {"n": self.n, "clean_accuracy": round(self.clean_accuracy, 4),
                "worst_case_accuracy": round(self.worst_case_accuracy, 4),
                "gradient_masking_suspected": self.gradient_masking_suspected,
                "attacks": {r.label: round(r.robust_accuracy, 4) for r in self.attacks}}

    def to_markdown(self) -> str:
        lines = [f"### {self.name} ({self.n} test images)", "",
                 "| attack | white-box | robust accuracy | max L-inf | seconds |", "|---|---|---|---|---|",
                 f"| none (clean) | - | {self.clean_accuracy:.2%} | 0 | - |"]
        for r in self.attacks:
            lines.append(f"| {r.label} | {'yes' if r.white_box else 'no'} | {r.robust_accuracy:.2%} | "
                         f"{r.max_linf:.4f} | {r.seconds:.0f} |")
        lines.append(f"| **worst case over all attacks** | - | **{self.worst_case_accuracy:.2%}** | - | - |")
        if self.gradient_masking_suspected:
            lines += ["", "**Gradient masking suspected:** a black-box attack did better than every "
                      "white-box one, so the white-box figures overstate robustness."]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out_dir / "report.md").write_text(self.to_markdown())
        self.plot(out_dir / "report.png")

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = ["clean"] + [r.label for r in self.attacks] + ["worst case"]
        values = [self.clean_accuracy] + [r.robust_accuracy for r in self.attacks] + [self.worst_case_accuracy]
        colors = ["tab:green"] + ["tab:blue" if r.white_box else "tab:orange" for r in self.attacks] + ["tab:red"]
        fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 4))
        ax.bar(range(len(labels)), [100 * v for v in values], color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{self.name}: robustness on {self.n} images (orange: black-box)")
        for i, v in enumerate(values):
            ax.text(i, 100 * v + 1, f"{100 * v:.1f}", ha="center", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
