"""One SUMMER training step at the paper's size, timed and profiled on a given device (issue 11, point 2).

The model is ``recipes/summer_iemocap.yaml`` (hidden 1024, text/audio/visual, SDMoE with four bi-GRU experts
per modality and in the fusion, HCMF, batch 16) on a fake IEMOCAP pickle of the real layout (151 dialogues,
about 7.4k utterances, text 1024 / audio 1582 / visual 342; ``plugins/mercore_data/fake_pickles.py``). The
distiller and its teacher stage are left out (the IKD teacher is a text-only model run without grad: the
student's step is what is timed). Each step is the trainer's own (:meth:`mercore.train.Trainer._train_step`:
autocast, backward, clipping, AdamW... as a run does it).

    python benchmarks/summer_epoch.py --device cpu --steps 3        # a few CPU steps (minutes on 2 loaded cores)
    python benchmarks/summer_epoch.py --device cuda --precision bf16 --steps 20
    python benchmarks/summer_epoch.py --device cpu --experts         # also: the bi-GRU expert variants

It prints the mean step time over ``--steps`` timed steps (after ``--warmup`` untimed ones), the epoch time
EXTRAPOLATED from it (steps per epoch x mean step: training steps only, no evaluation), the torch profiler's
top operations of one step, and on CUDA the fraction of the step the GPU is busy (profiler CUDA kernel time
/ wall time). ``--experts`` times the SDMoE's four bi-GRU experts (forward+backward) run one after another
(today's loop) against the alternatives: one CUDA stream per expert (CUDA only; the same kernels, so exact),
``torch.func.stack_module_state`` + ``vmap`` (where torch can vmap a GRU), and one GRU of E times the hidden
size with block-diagonal weights (one call, E times the recurrent FLOPs, not bit-identical).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import mercore  # noqa: F401
except ImportError:  # running from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

from mercore.data.types import iterate_batches  # noqa: E402
from mercore.recipe import load_recipe  # noqa: E402
from mercore.train import LoopState, Trainer  # noqa: E402

RECIPE = ROOT / "recipes" / "summer_iemocap.yaml"
#: IEMOCAP: 151 dialogues, 7,433 utterances (8 to 110 per dialogue, 49 on average).
PAPER = dict(dialogues=151, utterances=(12, 86), hidden=1024, batch_size=16)
QUICK = dict(dialogues=12, utterances=(4, 12), hidden=32, batch_size=4)


def fake_iemocap(folder: Path, dialogues: int, utterances: tuple[int, int], quick: bool) -> Path:
    """A fake IEMOCAP pickle in SDT's layout (the real dims unless ``quick``)."""
    from mercore_data.fake_pickles import write_fake_iemocap_pickle

    dims = {"text": 16, "audio": 12, "visual": 8} if quick else None
    return write_fake_iemocap_pickle(folder / "iemocap_fake.pkl", num_dialogues=dialogues, utterances=utterances,
                                     dims=dims)


def build_trainer(data: Path, out: Path, device: str, precision: str, hidden: int, batch_size: int,
                  threads: int | None, quick: bool) -> tuple[Trainer, Any]:
    """The trainer of the SUMMER recipe without its distiller and teacher stage, set up on ``device``."""
    overrides = [f"data.path={data}", "~distiller", "~stages", f"output_dir={out}", f"trainer.device={device}",
                 f"trainer.precision={precision}", f"model.hidden={hidden}", f"trainer.batch_size={batch_size}",
                 "trainer.progress=false"]
    if threads:
        overrides.append(f"trainer.threads={threads}")
    if quick:
        overrides.append("data.expected_dims={text: 16, audio: 12, visual: 8}")
    loaded = load_recipe(RECIPE, overrides)
    trainer = Trainer(loaded, log=lambda m: None)
    return trainer, trainer._set_up()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, setup: Any, steps: int, warmup: int) -> dict[str, Any]:
    """Mean and median seconds of ``steps`` training steps (0: an epoch's) after ``warmup`` untimed ones, in the
    epoch's order."""
    c = setup.components
    c.model.train()
    order = torch.Generator().manual_seed(0)
    batches = iterate_batches(setup.train_set, c.modalities, trainer.cfg.batch_size, generator=order,
                              pin_memory=setup.device.type == "cuda")
    state, times = LoopState(), []
    steps = steps if steps > 0 else setup.steps_per_epoch  # 0: a whole epoch's steps
    for step in range(warmup + steps):
        batch = next(batches, None)
        if batch is None:  # fewer batches than asked: start the order again
            batches = iterate_batches(setup.train_set, c.modalities, trainer.cfg.batch_size, generator=order)
            batch = next(batches)
        _sync(setup.device)
        t0 = time.perf_counter()
        trainer._train_step(setup, batch.to(setup.device), step, state)
        _sync(setup.device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    return {"steps": steps, "mean_s": mean, "median_s": statistics.median(times), "min_s": min(times),
            "steps_per_epoch": setup.steps_per_epoch, "epoch_s_extrapolated": mean * setup.steps_per_epoch}


def profile_step(trainer: Trainer, setup: Any, top: int) -> dict[str, Any]:
    """The torch profiler over one training step: its top operations (by self time) and, on CUDA, the fraction
    of the step's wall time the GPU is busy (the sum of CUDA kernel times / wall; kernels may overlap, so this
    can only overstate a little)."""
    from torch.profiler import ProfilerActivity, profile

    c = setup.components
    batch = next(iterate_batches(setup.train_set, c.modalities, trainer.cfg.batch_size,
                                 pin_memory=setup.device.type == "cuda")).to(setup.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    _sync(setup.device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        trainer._train_step(setup, batch, 0, LoopState())
        _sync(setup.device)
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    cuda = setup.device.type == "cuda"
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    result: dict[str, Any] = {"wall_s": wall, "table": averages.table(sort_by=sort, row_limit=top)}
    if cuda:
        busy_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in averages)
        result["gpu_busy_fraction"] = busy_us / 1e6 / wall
    return result


# ------------------------------------------------------------------------------------------ the bi-GRU experts


def _experts_inputs(setup: Any, trainer: Trainer):
    """A real batch's first SDMoE (text): its experts module, ``h (B, T, D)``, mask and routing."""
    c = setup.components
    moe = c.model.moes[c.modalities[0]]
    batch = next(iterate_batches(setup.train_set, c.modalities, trainer.cfg.batch_size)).to(setup.device)
    h = torch.randn(*batch.mask.shape, moe.experts.dim, device=setup.device, requires_grad=True)
    with torch.no_grad():
        routing = moe.router(moe.norm(h)[batch.mask])
    return moe.experts, h, batch.mask, routing


def experts_loop(experts, h, mask, routing) -> torch.Tensor:
    return experts(h, mask, routing)


def _streams_forward(experts, x, mask, routing) -> torch.Tensor:
    """BiGRUExperts.forward with expert e's GRU and projection on stream e (CUDA only)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from mercore_summer.moe.experts import _compact, _scatter_tokens

    mask = mask.bool()
    b, t, d = x.shape
    gate = routing.dense_gate(experts.num_experts)
    x_c, lengths = _compact(x, mask)
    packed = pack_padded_sequence(x_c, lengths.cpu(), batch_first=True, enforce_sorted=False)
    real_c = torch.arange(t, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    main = torch.cuda.current_stream()
    streams = [torch.cuda.Stream() for _ in range(experts.num_experts)]
    ys = []
    for e, stream in enumerate(streams):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            h, _ = experts.grus[e](packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)
            ys.append(gate[:, e:e + 1] * experts.proj[e](h[real_c]))
    for stream in streams:
        main.wait_stream(stream)
    out = torch.stack(ys).sum(0)
    return _scatter_tokens(out, mask)


def _vmap_forward(experts, x, mask, routing) -> torch.Tensor:
    """The experts as one vmapped GRU over stacked weights (torch.func); raises where torch cannot vmap a GRU."""
    from torch.func import functional_call, stack_module_state, vmap

    from mercore_summer.moe.experts import _scatter_tokens

    mask = mask.bool()
    params, buffers = stack_module_state(list(experts.grus))
    base = experts.grus[0]

    def one(p, bf, xx):
        return functional_call(base, (p, bf), (xx,))[0]

    h = vmap(one, in_dims=(0, 0, None))(params, buffers, x)  # (E, B, T, 2H), padding not packed
    gate = routing.dense_gate(experts.num_experts)
    out = sum(gate[:, e:e + 1] * experts.proj[e](h[e][mask]) for e in range(experts.num_experts))
    return _scatter_tokens(out, mask)


def block_diagonal_gru(experts) -> torch.nn.GRU:
    """One bidirectional GRU of hidden E*H whose weights hold the E experts' GRUs as diagonal blocks (every gate's
    recurrent matrix block-diagonal, zero elsewhere): the same function in one cuDNN/MKL call, at E times the
    recurrent FLOPs, summed in another order (so close to the loop's result, not bit-identical). Single layer."""
    e, h = experts.num_experts, experts.hidden
    first = experts.grus[0]
    big = torch.nn.GRU(experts.dim, e * h, batch_first=True, bidirectional=True).to(first.weight_ih_l0.device)
    with torch.no_grad():
        for p in big.parameters():
            p.zero_()
        for suffix in ("_l0", "_l0_reverse"):
            w_ih, w_hh = getattr(big, "weight_ih" + suffix), getattr(big, "weight_hh" + suffix)
            b_ih, b_hh = getattr(big, "bias_ih" + suffix), getattr(big, "bias_hh" + suffix)
            for k, gru in enumerate(experts.grus):
                for g in range(3):  # gates r, z, n: rows g*E*H + k*H ... of the big matrices
                    rows, src = slice(g * e * h + k * h, g * e * h + (k + 1) * h), slice(g * h, (g + 1) * h)
                    w_ih[rows] = getattr(gru, "weight_ih" + suffix)[src]
                    w_hh[rows, k * h:(k + 1) * h] = getattr(gru, "weight_hh" + suffix)[src]
                    b_ih[rows] = getattr(gru, "bias_ih" + suffix)[src]
                    b_hh[rows] = getattr(gru, "bias_hh" + suffix)[src]
    return big


def _block_diagonal_forward(experts, x, mask, routing, big: torch.nn.GRU) -> torch.Tensor:
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from mercore_summer.moe.experts import _compact, _scatter_tokens

    mask = mask.bool()
    b, t, d = x.shape
    e, hd = experts.num_experts, experts.hidden
    gate = routing.dense_gate(e)
    x_c, lengths = _compact(x, mask)
    packed = pack_padded_sequence(x_c, lengths.cpu(), batch_first=True, enforce_sorted=False)
    real_c = torch.arange(t, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    h, _ = big(packed)
    h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)
    h = h[real_c]  # (N, 2*E*H): forward directions of all experts, then backward ones
    out = sum(gate[:, k:k + 1] * experts.proj[k](torch.cat([h[:, k * hd:(k + 1) * hd],
                                                             h[:, e * hd + k * hd:e * hd + (k + 1) * hd]], -1))
              for k in range(e))
    return _scatter_tokens(out, mask)


def time_experts(setup: Any, trainer: Trainer, rounds: int) -> list[dict[str, Any]]:
    """Forward+backward ms of the bi-GRU experts: the loop, CUDA streams (CUDA), vmap; exactness vs the loop."""
    experts, h, mask, routing = _experts_inputs(setup, trainer)
    device = setup.device
    variants = {"loop (today)": experts_loop, "vmap (torch.func)": _vmap_forward}
    if experts.config.num_layers == 1:
        big = block_diagonal_gru(experts)
        variants["one block-diagonal GRU"] = lambda *a: _block_diagonal_forward(*a, big=big)
    if device.type == "cuda":
        variants["CUDA streams"] = _streams_forward
    ref = experts_loop(experts, h, mask, routing).detach()
    rows = []
    for name, fn in variants.items():
        try:
            out = fn(experts, h, mask, routing)
        except Exception as exc:  # noqa: BLE001  (a variant torch cannot run is reported, not fatal)
            rows.append({"variant": name, "ms": None, "exact": None, "note": f"{type(exc).__name__}: {str(exc)[:90]}"})
            continue
        exact = bool(torch.equal(out.detach(), ref))
        diff = float((out.detach() - ref).abs().max())
        times = []
        for _ in range(rounds):
            _sync(device)
            t0 = time.perf_counter()
            fn(experts, h, mask, routing).sum().backward()
            _sync(device)
            times.append(time.perf_counter() - t0)
        rows.append({"variant": name, "ms": 1e3 * statistics.median(times), "exact": exact,
                     "note": "" if exact else f"max |diff| {diff:.3g} (padding enters the recurrence)"
                     if name.startswith("vmap") else f"max |diff| {diff:.3g}"})
    return rows


# ------------------------------------------------------------------------------------------------------ main


def measure(device: str = "cpu", precision: str = "fp32", steps: int = 3, warmup: int = 1, quick: bool = False,
            threads: int | None = None, top: int = 15, experts: bool = False, rounds: int = 3,
            data: Path | None = None) -> dict[str, Any]:
    """Build the paper-size (or ``quick``) SUMMER step on ``device``, time it, profile it; a dict of results."""
    size = QUICK if quick else PAPER
    with tempfile.TemporaryDirectory(prefix="summer_epoch_") as tmp:
        t0 = time.perf_counter()
        path = data or fake_iemocap(Path(tmp), size["dialogues"], size["utterances"], quick)
        trainer, setup = build_trainer(path, Path(tmp) / "run", device, precision, size["hidden"],
                                       size["batch_size"], threads, quick)
        utterances = sum(len(d) for split in ("train", "dev", "test") for d in setup.components.corpus.split(split))
        n_params = sum(p.numel() for p in setup.components.model.parameters())
        result: dict[str, Any] = {
            "device": str(setup.device), "precision": precision, "threads": setup.threads,
            "dialogues": sum(len(setup.components.corpus.split(s)) for s in ("train", "dev", "test")),
            "utterances": utterances, "train_dialogues": len(setup.train_set), "hidden": size["hidden"],
            "batch_size": size["batch_size"], "parameters": n_params, "setup_s": time.perf_counter() - t0,
        }
        if steps >= 0:
            result["timing"] = time_steps(trainer, setup, steps, warmup)
        if top and steps >= 0:
            result["profile"] = profile_step(trainer, setup, top)
        if experts:
            result["experts"] = time_experts(setup, trainer, rounds)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"SUMMER step on {result['device']} ({result['precision']}, {result['threads']} CPU threads): "
        f"hidden {result['hidden']}, batch {result['batch_size']}, {result['parameters']:,} parameters; data "
        f"{result['dialogues']} dialogues / {result['utterances']} utterances ({result['train_dialogues']} train)",
    ]
    if "timing" in result:
        t = result["timing"]
        lines += [
            f"step: mean {t['mean_s']:.3f} s, median {t['median_s']:.3f} s, min {t['min_s']:.3f} s over {t['steps']} "
            "steps",
            f"epoch ({'EXTRAPOLATED: ' if t['steps'] < t['steps_per_epoch'] else ''}{t['steps_per_epoch']} steps x "
            f"mean step, training only, no evaluation): {t['epoch_s_extrapolated']:.1f} s",
        ]
    if "profile" in result:
        p = result["profile"]
        if "gpu_busy_fraction" in p:
            lines.append(f"GPU busy: {100 * p['gpu_busy_fraction']:.0f} % of the profiled step ({p['wall_s']:.3f} s)")
        lines += [f"profiler, one step ({p['wall_s']:.3f} s under the profiler), top operations by self time:",
                  p["table"]]
    if "experts" in result:
        lines += ["bi-GRU experts of one SDMoE (4 experts, forward+backward, median ms):", "",
                  "| variant | ms | exact | note |", "|---|---|---|---|"]
        for r in result["experts"]:
            ms = "-" if r["ms"] is None else f"{r['ms']:.1f}"
            lines.append(f"| {r['variant']} | {ms} | {'-' if r['exact'] is None else r['exact']} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--steps", type=int, default=3,
                    help="timed steps after --warmup untimed ones (0: an epoch's; -1: none, e.g. with --experts)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, help="trainer.threads (default: the thread policy)")
    ap.add_argument("--top", type=int, default=15, help="profiler rows (0: no profile)")
    ap.add_argument("--experts", action="store_true", help="also time the bi-GRU expert variants")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per expert variant")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks the script")
    ap.add_argument("--data", type=Path, help="an IEMOCAP pickle in SDT's layout instead of the fake one")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    result = measure(args.device, args.precision, args.steps, args.warmup, args.quick, args.threads, args.top,
                     args.experts, args.rounds, args.data)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items()}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
