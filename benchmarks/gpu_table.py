"""Issue 11's GPU benchmark in one command (under 5 minutes on one GPU): the MoE kernel table and a SUMMER
epoch at the paper's size on CUDA and on the CPU, as Markdown.

    python benchmarks/gpu_table.py --out gpu_table.md          # CUDA (bf16 and fp32) and the CPU
    python benchmarks/gpu_table.py --device cpu --quick        # the CPU only, tiny sizes: checks the script

Parts (each printed as soon as it is measured):

1. The kernel table (``benchmarks/kernel_table.py``): naive, fused, grouped-only and floor at the MERC, Mixtral
   and fine-grained sizes, fwd and fwd+bwd, peak memory (bf16 on CUDA, fp32 on the CPU).
2. SUMMER at the paper's size (``benchmarks/summer_epoch.py``: ``recipes/summer_iemocap.yaml``, hidden 1024,
   three modalities, batch 16, a fake IEMOCAP pickle of 151 dialogues / ~7.4k utterances): the mean training
   step over ``--cuda-steps`` steps on CUDA (bf16 and fp32) and ``--cpu-steps`` on the CPU; the epoch is the
   mean step times the steps of an epoch (training steps only, no evaluation; EXTRAPOLATED where fewer
   steps than an epoch's were timed: on CUDA ``--cuda-steps`` defaults to a whole epoch); the fraction of the CUDA step the GPU is busy
   (profiler CUDA kernel time / wall time of one profiled step).
3. The SDMoE's four bi-GRU experts (forward+backward) on CUDA: the loop of today against CUDA streams, vmap and
   one block-diagonal GRU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kernel_table  # noqa: E402
import summer_epoch  # noqa: E402


def kernel_part(device: str, quick: bool, rounds: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernel.md"
        argv = ["--device", device, "--rounds", str(rounds), "--out", str(out)] + (["--quick"] if quick else [])
        code = kernel_table.main(argv)
        if code:
            raise SystemExit(code)
        return out.read_text()


def summer_rows(runs: list[dict]) -> str:
    lines = ["| device | precision | CPU threads | step (ms, mean) | steps | steps per epoch | epoch (s) | "
             "GPU busy |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t = r["timing"]
        extrapolated = t["steps"] < t["steps_per_epoch"]
        epoch = f"{t['epoch_s_extrapolated']:.1f}" + (" (extrapolated)" if extrapolated else "")
        busy = r.get("profile", {}).get("gpu_busy_fraction")
        lines.append(f"| {r['device']} | {r['precision']} | {r['threads']} | {1e3 * t['mean_s']:.1f} | {t['steps']} | "
                     f"{t['steps_per_epoch']} | {epoch} | {'-' if busy is None else f'{100 * busy:.0f} %'} |")
    return "\n".join(lines)


def experts_rows(runs: list[dict]) -> str:
    lines = ["| device | precision | variant | fwd+bwd (ms) | exact | note |", "|---|---|---|---|---|---|"]
    for r in runs:
        for e in r.get("experts", []):
            ms = "-" if e["ms"] is None else f"{e['ms']:.2f}"
            lines.append(f"| {r['device']} | {r['precision']} | {e['variant']} | {ms} | "
                         f"{'-' if e['exact'] is None else e['exact']} | {e['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda: the kernel table and SUMMER on CUDA, and SUMMER on the CPU; cpu: the CPU only")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU): checks the script")
    ap.add_argument("--rounds", type=int, default=10, help="kernel table rounds per cell")
    ap.add_argument("--cuda-steps", type=int, default=0, help="timed SUMMER steps on CUDA (0: a whole epoch)")
    ap.add_argument("--cpu-steps", type=int, default=2, help="timed SUMMER steps on the CPU (then extrapolated)")
    ap.add_argument("--no-kernel", action="store_true", help="skip the kernel table")
    ap.add_argument("--out", type=Path, help="also write the whole Markdown to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); use --device cpu")
    sections = []
    if not args.no_kernel:
        sections.append("## MoE kernel\n\n" + kernel_part(args.device, args.quick, args.rounds))
    runs = []
    plan = [("cuda", "bf16", args.cuda_steps, 3), ("cuda", "fp32", args.cuda_steps, 3)] if args.device == "cuda" else []
    plan.append(("cpu", "fp32", args.cpu_steps, 0))  # no warm-up: a CPU step is tens of seconds at this size
    size = summer_epoch.QUICK if args.quick else summer_epoch.PAPER
    with tempfile.TemporaryDirectory(prefix="gpu_table_") as tmp:
        data = summer_epoch.fake_iemocap(Path(tmp), size["dialogues"], size["utterances"], args.quick)  # written once
        for device, precision, steps, warmup in plan:
            # The expert variants on the CPU only with --quick (at the paper size they take minutes there:
            # `summer_epoch.py --device cpu --steps -1 --top 0 --experts` measures them alone).
            result = summer_epoch.measure(device, precision, steps=steps, warmup=warmup, quick=args.quick, top=15,
                                          experts=device == "cuda" or args.quick, rounds=3 if device == "cuda" else 1,
                                          data=data)
            runs.append(result)
            print(summer_epoch.report(result), flush=True)
    sections.append(f"## SUMMER training step ({'QUICK sizes' if args.quick else 'the paper size'}: hidden "
                    f"{size['hidden']}, batch {size['batch_size']}, {runs[0]['dialogues']} dialogues / "
                    f"{runs[0]['utterances']} utterances, torch {torch.__version__})\n\n" + summer_rows(runs))
    sections.append("## bi-GRU experts of one SDMoE (4 experts)\n\n" + experts_rows(runs))
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
