"""Render the README's "Performance" tables from the results files (numbers are never typed by hand).

    python benchmarks/render_performance.py            # print the section
    python benchmarks/render_performance.py --write    # replace it in README.md, between the markers

Figures whose results file does not exist yet (the GPU ones, until a GPU run) are listed as still
to be measured, with the command that measures them.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def load(name: str) -> dict | None:
    for folder in (RESULTS, RESULTS / "gpu"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    return None


def where(r: dict, name: str) -> str:
    m = r.get("machine", {})
    dev = m.get("gpu") or f"CPU, {m.get('threads', '?')} thread(s)"
    return f"`benchmarks/results/{name}`, commit {r.get('commit', '?')}, {dev}, wall {r.get('wall_s', '?')} s"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def monai_section(out: list[str], missing: list[str]) -> None:
    for name, title, target in (("medical_mae_step.json", "width 192, depth 6, decoder 96x2", "MAE at least 1.27x MONAI's samples/s at no more than 0.85x its peak memory"),
                                ("medical_mae_step-monai768.json", "MONAI's defaults: width 768 (MLP 512), depth 12, decoder 384x4 (MLP 512)",
                                 "MAE at least 1.0x MONAI's samples/s")):
        r = load(name)
        if r is None:
            missing.append(f"MAE/JEPA vs MONAI ({title}): `python benchmarks/medical_mae_step.py`")
            continue
        s = r["settings"]
        out += ["", f"**3-d step vs MONAI `MaskedAutoEncoderViT`**, {title}; {s['size']}³ volume, {s['patch']}³ patches, "
                f"batch {s['batch']}, mask ratio {s['mask_ratio']} ({where(r, name)}):", ""]
        out += table(["model", "samples/s", "peak MB", "parameters", "speed vs MONAI", "memory vs MONAI"],
                     [[x["model"], f"{x['samples_per_s']:.2f}", f"{x['peak_memory_mb']:.0f}", f"{x['parameters']:,}",
                       f"{x['speed_vs_monai']:.2f}x", f"{x['memory_vs_monai']:.2f}x"] for x in r["rows"]])
        out += ["", f"Target: {target}. MAE measured: {r['speed_ratio_ours_over_monai']:.2f}x speed, "
                f"{r['memory_ratio_ours_over_monai']:.2f}x memory. (JEPA, a different objective with a teacher pass over all tokens, is shown for its cost.)"]
        prof = r["profile_ms_per_step"]
        parts = ["tokenizer", "encoder", "target encoder", "decoder", "predictor", "masking + glue + head + loss", "backward", "optimiser"]
        out += ["", "Where the time goes (ms per step, synchronised steps with module hooks):", ""]
        out += table(["model"] + parts, [[n] + [prof[n].get(p, "") for p in parts] for n in prof])


def dropping_section(out: list[str], missing: list[str]) -> None:
    r = load("token_dropping.json")
    if r is None:
        missing.append("token dropping vs flop_counter: `python benchmarks/token_dropping.py`")
        return
    s = r["settings"]
    out += ["", f"**Token dropping**, MAE at mask ratio {s['mask_ratio']} with the encoder on visible tokens vs the same model "
            f"with every token in the encoder ({where(r, 'token_dropping.json')}):", ""]
    out += table(["variant", "GFLOPs/step", "s/step"], [[k, r["gflops_per_step"][k], r["seconds_per_step"][k]] for k in ("dropping", "all_tokens")])
    out += ["", f"Speed-up predicted by `flop_counter` {r['predicted_speedup']:.2f}x, measured {r['measured_speedup']:.2f}x: "
            f"**{r['ratio_of_speedups']:.0%} of the prediction** (target 80%)."]


def loader_section(out: list[str], missing: list[str]) -> None:
    r = load("loader_throughput.json")
    if r is None:
        missing.append("loader vs step per recipe: `python benchmarks/loader_throughput.py`")
        return
    out += ["", f"**Input pipeline vs step**, each modality's CPU recipe, one core each ({where(r, 'loader_throughput.json')}):", ""]
    out += table(["recipe", "batch", "loader samples/s", "step samples/s", "loader / step", "first epoch loader samples/s"],
                 [[x["recipe"], x["batch_size"], x["loader_samples_per_s"], x["step_samples_per_s"], f"{x['loader_over_step']:.2f}x"
                   + ("" if x["meets_2x"] else " (below 2x)"), x.get("first_epoch_loader_samples_per_s", "")] for x in r["rows"]])
    pc = next((x for x in r["rows"] if x["modality"] == "pointcloud"), None)
    rnd = load("loader_throughput-pointcloud-random.json")
    if pc is not None and not pc["meets_2x"] and rnd is not None:
        alt = rnd["rows"][0]
        out += ["", "pointcloud-mae draws each cloud's 1,024 points by exact farthest-point sampling on the loader worker "
                "(numpy, picks identical to the batched torch loop it replaced and about 8x faster), which stays below 2x. "
                f"With `adapter.sampling=random`, Point-MAE's own pretraining protocol, the loader runs "
                f"{alt['loader_over_step']:.2f}x the step ({where(rnd, 'loader_throughput-pointcloud-random.json')}). "
                "The recipe keeps FPS because the published point-cloud results were measured with it."]


def gpu_section(out: list[str], missing: list[str]) -> None:
    for mode in ("eager", "compiled"):
        name = f"gpu_step-{mode}.json"
        r = load(name)
        if r is None:
            missing.append(f"ViT-B/16 MAE/JEPA samples/s, peak memory, MFU and ratio to timm, {mode}: "
                           f"`bash benchmarks/gpu_suite.sh OUT` (or `python benchmarks/gpu_step.py{' --compile' if mode == 'compiled' else ''}`)")
            continue
        out += ["", f"**ViT-B/16 on one GPU, {mode}** ({where(r, name)}):", ""]
        out += table(["row", "batch", "samples/s", "peak GiB", "TFLOPs/step", "MFU", "vs timm"],
                     [[x["row"], x["batch"], x["samples_per_s"], x["peak_mem_gib"], x["tflops_per_step"],
                       "" if x["mfu"] is None else f"{x['mfu']:.1%}", f"{x['vs_timm']:.2f}x" if "vs_timm" in x else ""] for x in r["rows"]])
    r = load("compile_recipes.json")
    if r is None:
        missing.append("`train.compile=true` speed and compile counts per recipe: `python benchmarks/compile_recipes.py`")
    else:
        out += ["", f"**`train.compile=true`** per recipe ({where(r, 'compile_recipes.json')}):", ""]
        out += table(["recipe", "steps", "eager samples/s", "compiled samples/s", "speed-up", "dynamo compiles", "max loss difference"],
                     [[x["recipe"], x["steps"], x["eager_samples_per_s"], x["compiled_samples_per_s"], f"{x['speedup']:.2f}x",
                       x.get("compiles", x.get("recompiles")), x["max_abs_loss_diff"]] for x in r["rows"]])
        out += ["", "Losses are logged to 6 decimals. Rates exclude the first logging window (where compilation happens); "
                "eager and compiled runs follow each other rather than alternate, on a loaded machine, so these speed-ups are rough."]


def render() -> str:
    out, missing = ["## Performance", "",
                    "Ratios are measured side by side in one process (alternating rounds, median of per-round ratios); the CPU "
                    "figures come from a shared, heavily loaded 2-core machine, so compare ratios, not absolute rates. "
                    "Regenerate this section with `python benchmarks/render_performance.py --write`.", "",
                    "Speed options, all numerically neutral (tested against the plain path, with negative controls in "
                    "`tests/foundation/test_step_speed.py`): batches without padding run attention with no mask (flash kernels "
                    "allowed); `train.activation_checkpointing=true` recomputes block activations in the backward pass (3-d volumes); "
                    "`train.compile=true` compiles every Transformer block with `torch.compile` (dynamo compiles are counted in "
                    "`summary.json`); AdamW is fused on CPU and GPU; loss sums stay on the device until `train.log_every` (the NaN/inf guard "
                    "still reads one flag per step); speech clips are batched by length."], []
    monai_section(out, missing)
    dropping_section(out, missing)
    loader_section(out, missing)
    gpu_section(out, missing)
    if missing:
        out += ["", "Still to be measured (no results file yet; the GPU ones need a GPU, and the timm comparison needs "
                "`pip install -e .[bench]`):", ""] + [f"- {m}" for m in missing]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the section in README.md")
    a = ap.parse_args()
    text = render()
    if not a.write:
        print(text)
        return
    readme = ROOT / "README.md"
    src = readme.read_text()
    block = f"{START}\n{text}{END}"
    if START in src:
        src = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, src, flags=re.S)
    else:
        src = src.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(src)
    print(f"wrote the Performance section of {readme}")


if __name__ == "__main__":
    main()
