"""What a hand-eye calibration writes: the transform YAML (with the setup, method and agreement), and the
report of every method, their agreement, the board pose they imply, and the views used and skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pi0edge.calibration.handeye import HandEyeFrames, HandEyeResult
from pi0edge.calibration.transforms import Transform, transform_yaml_text


@dataclass(frozen=True)
class HandEyeViews:
    """Per image: used (corners, board RMS px) or skipped (with the reason), in file order."""

    used: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def handeye_yaml_text(result: HandEyeResult, frames: HandEyeFrames, consensus: bool) -> str:
    extra = {
        "setup": result.setup,
        "method": result.chosen + (" (consensus)" if consensus else ""),
        "max_method_disagreement_mm": result.max_disagreement_mm,
        "max_method_disagreement_deg": result.max_disagreement_deg,
    }
    return transform_yaml_text(Transform(frames.parent, frames.child, result.transform), extra)


def handeye_report(result: HandEyeResult, frames: HandEyeFrames, views: HandEyeViews) -> dict[str, Any]:
    def as_result(matrix) -> dict[str, Any]:
        return Transform(frames.parent, frames.child, matrix).to_dict()

    return {
        "format": "pi0edge-handeye-report",
        "version": 1,
        "setup": result.setup,
        "chosen": result.chosen,
        "transform": as_result(result.transform),
        "target": Transform(frames.target_parent, frames.target_child, result.target).to_dict(),
        "methods": {
            name: {**as_result(m.transform), "target_spread_mm": m.spread_mm, "target_spread_deg": m.spread_deg}
            for name, m in result.methods.items()
        },
        "agreement": {
            "max_translation_mm": result.max_disagreement_mm,
            "max_rotation_deg": result.max_disagreement_deg,
            "pairs": result.pairwise,
        },
        "views_used": views.used,
        "views_skipped": views.skipped,
        "warnings": result.warnings,
    }


def handeye_report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def handeye_report_text(report: dict[str, Any]) -> str:
    used, skipped = report["views_used"], report["views_skipped"]
    main = report["transform"]
    lines = [
        f"hand-eye ({report['setup']}) from {len(used)} views ({len(skipped)} skipped): "
        f"{main['parent_frame']} -> {main['child_frame']}"
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"  {name:<10} t_m [{', '.join(f'{v:+.4f}' for v in m['translation_m'])}]  q_xyzw "
            f"[{', '.join(f'{v:+.5f}' for v in m['quaternion_xyzw'])}]  fit {m['target_spread_mm']:.2f} mm / "
            f"{m['target_spread_deg']:.3f} deg" + ("  <- chosen" if name == report["chosen"] else "")
        )
    agreement = report["agreement"]
    lines.append(
        f"methods agree within {agreement['max_translation_mm']:.3f} mm / {agreement['max_rotation_deg']:.4f} deg"
    )
    lines += [f"skipped {view['image']}: {view['reason']}" for view in skipped]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
