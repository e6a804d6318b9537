"""The pipeline's last stage: report.md / report.png / report.json in the project.

real | synthetic | prediction on real; the set-level realism of the synthetic images against
the real ones (`evaluate --unpaired`); the cleaning judge's shares; stage times. With a
labelled set to score against (--score DIR, never used for training), its Dice / AP too, and
where each round's segmenter errs (missed, loose, merged, on background).
"""

from __future__ import annotations

import json
from pathlib import Path

from cellsynth_cli import io, workdir
from cellsynth_cli.measure.error_analysis import ERROR_KINDS
from cellsynth_cli.pipeline import stamps
from cellsynth_cli.pipeline.checks import run_checks
from cellsynth_cli.pipeline.stages import CLEAN, Context

SCORED = "pred-score"
REPORT_MD, REPORT_PNG, REPORT_JSON = "report.md", "report.png", "report.json"
OUTPUTS = (REPORT_MD, REPORT_PNG, REPORT_JSON)
METRICS = ("dice", "ap@0.5", "ap@0.75", "f1")


def report(ctx: Context, score_against: Path | None = None) -> dict:
    from cellsynth_cli.io.preview import save_panels
    from cellsynth_cli.measure.realism import compare_sets
    from cellsynth_cli.runtime.device import machine

    real = io.read_volume(io.list_volumes(ctx.data)[0])
    synth = io.read_volume(io.list_volumes(ctx.path(CLEAN))[0])
    pred = io.read_volume(io.volume_path(ctx.path(ctx.results["rounds"]["pred"]), real.name))
    save_panels(
        ctx.path(REPORT_PNG),
        [
            (f"real ({real.name})", real.image, False),
            ("synthetic", synth.image, False),
            ("sketch", synth.sketch, False),
            ("prediction on real", pred.masks, True),
        ],
    )
    realism = compare_sets(ctx.path(workdir.SYNTH), ctx.data).to_dict()
    checks = run_checks(
        ctx.data,
        ctx.path(ctx.results["rounds"]["pred"]),
        ctx.results["fit"]["estimates"],
        realism["scores"],
        ctx.path(CLEAN),
    )
    # the fit's own warnings first (records from before 0.3.0 hold none)
    warnings = ctx.results["fit"].get("warnings", []) + [c.warning() for c in checks if not c.ok]
    scores = _score(ctx, score_against) if score_against is not None else None
    records = {name: stamps.finished(ctx.project, name) for name in ctx.results}
    summary = {
        "recipe": ctx.recipe.to_dict(),
        "machine": machine(),  # of the report; a rerun may have kept stages made elsewhere
        "results": ctx.results,
        "realism": realism["scores"],
        "checks": [c.to_dict() for c in checks],
        "warnings": warnings,
        "scores": scores,
        "seconds": {name: record["seconds"] for name, record in records.items() if record},
        # stages kept from another cellsynth version (their stamps cover settings, not code)
        "made_by_another_version": {
            name: made_by
            for name, record in records.items()
            if record and (made_by := stamps.made_by_another_version(record))
        },
    }
    io.write_text(ctx.path(REPORT_JSON), json.dumps(summary, indent=2) + "\n", overwrite=True)
    io.write_text(ctx.path(REPORT_MD), _markdown(ctx, summary), overwrite=True)
    return {"scores": scores and scores["summary"], "warnings": warnings}


def _score(ctx: Context, reference: Path) -> dict:
    """Segment the labelled set with the kept round's segmenter and score it (reporting only);
    with self-training rounds, every round's segmenter is scored too."""
    rounds = ctx.results["rounds"]["rounds"]
    kept = ctx.results["rounds"]["kept"]
    scores = {r["round"]: _score_model(ctx, r["seg"], reference, r["round"]) for r in rounds}
    return {
        **scores[kept],
        "rounds": {k: s["summary"] for k, s in scores.items()},
        "round_errors": {k: s["errors"] for k, s in scores.items()},
    }


def _score_model(ctx: Context, seg: str, reference: Path, round_number: int) -> dict:
    from cellsynth_cli.segment.predict import predict, score

    out = ctx.path(SCORED if round_number == 1 else f"{SCORED}-r{round_number}")
    predict(
        ctx.path(seg),
        reference,
        out,
        overwrite=True,
        mode=ctx.recipe.predict.mode,
        min_size_fraction=ctx.recipe.predict.fraction(),
        match_brightness=ctx.recipe.predict.match_brightness,
        device=ctx.device,
        cluster=ctx.cluster,
    )
    return score(out, reference)


def _markdown(ctx: Context, summary: dict) -> str:
    results = ctx.results
    lines = [
        f"# cellsynth pipeline: {ctx.data}",
        "",
        f"Budget {ctx.recipe.budget}; every setting is in .cellsynth/*.json and "
        "`cellsynth pipeline --show-recipe`. No mask drawn by a person was read.",
        "",
        _machine_line(summary["machine"]),
        "",
        f"![real | synthetic | sketch | prediction on real]({REPORT_PNG})",
        "",
        f"- t_start {results['t_start']['t_start']} (rule {results['t_start']['rule']})",
        f"- cleaning (classical judge): kept {results['clean']['kept']} of "
        f"{results['clean']['of']} synthetic images; phantom {results['clean']['phantom']:.1%}, "
        f"vanished {results['clean']['vanished']:.1%} of cells",
    ]
    if results["segment"].get("note"):
        lines.append(f"- segment: {results['segment']['note']}")
    for name, made_by in summary["made_by_another_version"].items():
        lines.append(f"- {name}: {stamps.kept_from_another_version(name, made_by)}")
    lines += _checks_lines(summary["checks"], summary["warnings"])
    lines += ["", "## Realism of the synthetic set (unpaired, ratio 1 = as close as real halves)"]
    lines += ["", "| distance | value | floor | ratio |", "|---|---|---|---|"]
    for row in summary["realism"]:
        cells = [_fmt(row.get(k)) for k in ("value", "floor", "ratio")]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += _rounds_lines(results["rounds"], summary["scores"])
    if summary["scores"]:
        mean = summary["scores"]["summary"]
        lines += ["", "## Scored against labelled images (not used for training)", ""]
        lines += ["| " + " | ".join(METRICS) + " |", "|" + "---|" * len(METRICS)]
        lines.append("| " + " | ".join(f"{mean[m]['mean']:.3f}" for m in METRICS) + " |")
        lines += _errors_lines(summary["scores"]["round_errors"])
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"


def _checks_lines(checks: list[dict], warnings: list[str]) -> list[str]:
    lines = ["", "## Checks without labels", ""]
    lines += ["| check | value | a sound run | |", "|---|---|---|---|"]
    for c in checks:
        verdict = "ok" if c["ok"] else "**off**"
        lines.append(f"| {c['name']} | {c['value']:.2f} | {c['sound']} | {verdict} |")
    if warnings:
        lines += ["", *(f"- **warning**: {w}" for w in warnings)]
    return lines


def _machine_line(machine: dict) -> str:
    """Where the results repeat bit for bit: these versions, kernels and threads."""
    from cellsynth_cli.runtime.device import described

    return (
        f"Reported by {described(machine)}; another CPU kernel set or thread count trains "
        "other models (docs/reproducibility.md)."
    )


def _rounds_lines(rounds: dict, scores: dict | None) -> list[str]:
    """Self-training: per round, the confident share of real cells (the guard) and, with
    --score, the held-back scores."""
    if len(rounds["rounds"]) < 2:
        return []
    scored = (scores or {}).get("rounds", {})
    head = ["round", "synthetic set", "pseudo-label crops", "real cells", "confident share"]
    head += METRICS
    lines = ["", f"## Self-training rounds (kept: round {rounds['kept']})", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds["rounds"]:
        means = scored.get(r["round"], {})
        cells = [
            str(r["round"]),
            _synthetic_set(r),
            str(r.get("pseudo_crops", "-")),
            str(r.get("n_cells", "-")),
            _fmt(r.get("confident_share")),
            *(_fmt(means[m]["mean"]) if m in means else "-" for m in METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _synthetic_set(round_record: dict) -> str:
    """Which synthetic images a round trained on: its own generator's (kept of made, and the
    QC shares of lost cells) or the first set."""
    generator = round_record.get("generator")
    if not generator:
        return "round 1's"
    judged = generator["clean"]
    return (
        f"own ({generator['steps']} steps): {judged['kept']}/{judged['of']} kept, phantom "
        f"{judged['phantom']:.1%}, vanished {judged['vanished']:.1%}"
    )


def _errors_lines(round_errors: dict) -> list[str]:
    """Where each round's segmenter errs on the labelled set, in cells (error_counts)."""
    head = ["round", "real cells", "missed", "loose (IoU 0.5-0.75)", "merged", "on background"]
    lines = ["", "Where the errors are, in cells:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for round_number, counts in round_errors.items():
        cells = [str(round_number), *(str(counts[k]) for k in ERROR_KINDS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
