"""The tables and Markdown of the training-step benchmark: a helper module of ``train_step.py``, not a script.

``table``: one row per mode; ``targets_report``: the issue's targets, met or not; ``profile_report``: where
the time of (a) goes; ``markdown_section``: the "Training step" section of its page (docs/benchmarks/train-step.md).
"""

from __future__ import annotations

import argparse
from typing import Any

MODE_LABEL = {"lora": "(a) LoRA", "full": "(b) full fine-tune", "naive": "(c) naive (re-encode per target)"}


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def machine_rate(results: dict[str, dict[str, Any]]) -> float:
    """The machine's float32 matmul rate, GFLOP/s: the best measured in any mode's process."""
    return max(r["matmul_gflops"] for r in results.values())


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| mode | trainable params | step (s), best (median) | targets/s | decodes/s | peak memory above model | "
            "GFLOP/step (fwd+bwd) | FLOP floor (s) | step / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in results.items():
        flops = r.get("flops", {}).get("total")
        floor = flops / (machine_rate(results) * 1e9) if flops else None
        note = f" ({r['median_step_s']:.2f})" if mode != "naive" else (
            f" (scaled from {r['timed_targets_per_step']:g} targets)")
        rows.append(
            f"| {MODE_LABEL[mode]} | {r['trainable']:,} | {r['step_s']:.2f}{note} | {r['targets_per_s']:.2f} | "
            f"{r['decodes_per_s']:.2f} | {fmt_bytes(r['peak_bytes'])} | "
            f"{flops / 1e9:,.1f} | {floor:.3f} | {r['step_s'] / floor:.2f}x |" if flops else
            f"| {MODE_LABEL[mode]} | {r['trainable']:,} | {r['step_s']:.2f}{note} | {r['targets_per_s']:.2f} | "
            f"{r['decodes_per_s']:.2f} | {fmt_bytes(r['peak_bytes'])} | n/a | n/a | n/a |")
    return "\n".join(rows)


def targets_report(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    a, b, c = results.get("lora"), results.get("full"), results.get("naive")
    if a and c:
        ratio = a["targets_per_s"] / c["targets_per_s"]
        lines.append(f"- (a) >= 10x the prompts/s of (c): **{'met' if ratio >= 10 else 'NOT met'}**, "
                     f"{ratio:.1f}x ({a['targets_per_s']:.2f} vs {c['targets_per_s']:.2f} targets/s).")
    if a and b:
        share = a["peak_bytes"] / b["peak_bytes"]
        lines.append(f"- (a) peak memory <= 60 % of (b): **{'met' if share <= 0.6 else 'NOT met'}**, "
                     f"{share:.0%} ({fmt_bytes(a['peak_bytes'])} vs {fmt_bytes(b['peak_bytes'])} above the built "
                     f"model; absolute process peaks {fmt_bytes(a['peak_abs_bytes'])} vs {fmt_bytes(b['peak_abs_bytes'])}).")
    if a and "flops" in a:
        floor = a["flops"]["total"] / (machine_rate(results) * 1e9)
        lines.append(f"- (a) within 1.5x of its FLOP floor: **{'met' if a['step_s'] <= 1.5 * floor else 'NOT met'}**, "
                     f"{a['step_s'] / floor:.2f}x ({a['step_s']:.2f} s vs {floor:.2f} s = "
                     f"{a['flops']['total'] / 1e9:.0f} GFLOP / {machine_rate(results):.0f} GFLOP/s).")
    return lines


def profile_report(a: dict[str, Any]) -> list[str]:
    lines = []
    if "parts" in a:
        p = a["parts"]
        lines.append(f"Where the time of (a) goes (wall time in the fastest of {a['profile_steps']} instrumented "
                     f"steps, {p['step_s']:.2f} s; each part timed by wrapping the function `interactive_step` "
                     f"calls, backward split at the image embedding by a gradient hook):")
        lines.append("")
        lines.append("| part | s / step | share | calls / step |")
        lines.append("|---|---:|---:|---:|")
        for name, s in sorted(p["parts_s"].items(), key=lambda kv: -kv[1]):
            calls = p["calls"].get(name)
            lines.append(f"| {name} | {s:.3f} | {s / p['step_s']:.1%} | {'' if calls is None else f'{calls:g}'} |")
        lines.append("")
    if "flops" in a:
        f = a["flops"]
        parts = ", ".join(f"{k[4:]} {v / 1e9:.1f}" for k, v in f.items() if k.startswith("fwd:"))
        lines.append(f"FLOPs of (a), GFLOP: forward + backward {f['total'] / 1e9:.1f}; forward "
                     f"{f.get('forward', 0) / 1e9:.1f} ({parts}).")
        lines.append("")
    if "matmul_gflops_shapes" in a:
        shapes = "; ".join(f"{k}: {v:.0f}" for k, v in a["matmul_gflops_shapes"].items())
        lines.append(f"Matmul rate, GFLOP/s: 2048^3 {a['matmul_gflops']:.0f} (best of before the steps, "
                     f"{a['matmul_gflops_before']:.0f}, and after, {a['matmul_gflops_after']:.0f}); at the encoder's "
                     f"own shapes: {shapes}.")
        lines.append("")
    if "torch_profile" in a:
        tp = a["torch_profile"]
        step, enc = tp["step"], tp["encoder"]
        lines.append("Self time by kind of op (`torch.profiler`, `record_shapes`; the fastest of "
                     f"{a['profile_steps']} profiled steps of (a), and of the image encoder alone, forward + backward with a random gradient at the embedding; a matmul counts as "
                     "LoRA when one of its matrix dims equals the rank, 4). Under the profiler the step took "
                     f"{step['wall_s']:.2f} s (self times sum to {step['self_s']:.2f} s), the encoder alone "
                     f"{enc['wall_s']:.2f} s:")
        lines.append("")
        lines.append("| kind | step: s | step: share | encoder alone: s | rest of step (decoder, loss, prompts, optimizer): s |")
        lines.append("|---|---:|---:|---:|---:|")
        names = sorted(set(step["categories"]) | set(enc["categories"]), key=lambda n: -step["categories"].get(n, 0))
        for name in names:
            s_step, s_enc = step["categories"].get(name, 0.0), enc["categories"].get(name, 0.0)
            lines.append(f"| {name} | {s_step:.3f} | {s_step / step['self_s']:.1%} | {s_enc:.3f} | "
                         f"{s_step - s_enc:.3f} |")
        lines.append("")
        lines.append("Top ops of one step of (a) by self time:")
        lines.append("")
        lines.append("| op | calls | self ms | share |")
        lines.append("|---|---:|---:|---:|")
        for r in step["ops"]:
            lines.append(f"| `{r['op']}` | {r['calls']} | {r['self_ms']:.1f} | {r['share']:.1%} |")
        lines.append("")
    return lines


def markdown_section(results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str,
                     machine: str, shared: str) -> str:
    a = results.get("lora", {})
    lines = [
        "",
        "## Training step",
        "",
        f"SAM `{args.model_type}` (random weights) at {args.image_size[0]}x{args.image_size[1]}, "
        f"K = {args.masks} target masks per image, {args.iterations} interactive iterations, batch of 1 synthetic "
        f"SA-1B image (`make_synthetic` + `open_dataset`), on `{args.device}`. A step = "
        "`LoRASAM.interactive_step` (encoder once per image, all targets decoded together per iteration) + "
        "mean loss + backward + `AdamW.step` over the trainable parameters; each mode runs in its own subprocess.",
        "",
        f"Machine: {machine}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Units: **targets/s** = target masks trained per second (K per image and step; each is one prompt "
        "sequence: a point with up to 3 clicks, or one noisy box); **decodes/s** = (target, iteration) pairs "
        "decoded per second (a point target counts its iterations, a box 1). Step time: best (and median) of "
        f"{args.steps} timed steps after {args.warmup} warm-up step(s); (c) calls `interactive_step` once per target "
        f"(encoder K times, one backward per target), timed over {args.naive_targets} targets for {args.naive_steps} "
        "steps and scaled to K as `(t - t_opt) * K / n + t_opt`. Peak memory: the mode's process peak "
        "(VmHWM, reset via /proc/self/clear_refs after the model, optimiser and batch are built) minus its RSS "
        "then; it includes gradients and AdamW state. FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one "
        "step's forward + backward (matmul / conv / attention only); FLOP floor = FLOPs / the machine's "
        f"float32 matmul rate, {machine_rate(results):.0f} GFLOP/s: a 2048^3 matmul, same {args.threads} threads, "
        "best of repeats before and after the steps in each mode's process ("
        + ", ".join(f"{m} {r['matmul_gflops']:.0f}" for m, r in results.items()) + " GFLOP/s).",
        "",
        table(results),
        "",
        "Targets:",
        "",
        *targets_report(results),
        "",
        f"{shared}. {args.note}".rstrip(),
        "",
    ]
    if a:
        lines += ["### Profile of (a)", "", *profile_report(a)]
    return "\n".join(lines) + "\n"
