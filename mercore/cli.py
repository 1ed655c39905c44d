"""The ``mercore`` command line: run, validate, eval, plugins, list, show, sweep, report, compare.

Exit codes: 0 success; 1 a data, checkpoint or training error; 2 a recipe or registry error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import attrs

from mercore.errors import ConfigError, MercoreError, RegistryError

EPILOG_RUN = """\
overrides:
  key.sub=value      set a key (the value is read as YAML: 1e-3, [a, b], null, true)
  ~key.sub           remove a key
  model.fusion.type=concat
                     swap a component: its node is reset to the new component's defaults and the
                     dropped keys are reported
examples:
  mercore run recipes/demo_synthetic.yaml
  mercore run recipes/demo_synthetic.yaml trainer.epochs=3 optimizer.lr=3e-4 output_dir=runs/try
  mercore run recipes/demo_synthetic.yaml resume=true        continue an interrupted run
  torchrun --nproc_per_node=2 -m mercore run RECIPE          data-parallel training
"""


def _print_problems(exc: MercoreError) -> None:
    print(f"error: {exc}", file=sys.stderr)


def _load(args) -> "object":
    from mercore.recipe import load_recipe

    loaded = load_recipe(args.recipe, list(args.overrides))
    for note in loaded.notes:
        print(f"note: {note.message}", file=sys.stderr)
    return loaded


def cmd_run(args) -> int:
    from mercore import distributed
    from mercore.train import Trainer

    loaded = _load(args)
    distributed.init_if_needed(loaded.recipe.trainer.device)
    results = Trainer(loaded).run()
    if distributed.rank() == 0:
        t = results["test"]
        print(f"test (epoch {results['best_epoch']}, selected on {results['selected_on']}): "
              f"accuracy {t['accuracy']:.4f}  weighted F1 {t['weighted_f1']:.4f}  macro F1 {t['macro_f1']:.4f}")
        print("per-class F1: " + "  ".join(f"{k} {v:.3f}" for k, v in t["per_class_f1"].items()))
        print(f"run directory: {loaded.recipe.output_dir}")
    return 0


def cmd_validate(args) -> int:
    loaded = _load(args)
    print(f"{args.recipe}: valid")
    if args.build:
        import torch

        from mercore.data.types import iterate_batches
        from mercore.train import build_components, forward_batch, seed_everything

        seed_everything(loaded.recipe.seed)
        c = build_components(loaded.recipe)
        batch = next(iterate_batches(c.corpus.split("train"), c.modalities, min(2, loaded.recipe.trainer.batch_size)))
        c.model.train()
        out, terms = forward_batch(c, batch)
        sum(terms.values()).backward()
        n = sum(p.numel() for p in c.model.parameters() if p.requires_grad)
        print(f"built {loaded.recipe.model.name} ({n:,} parameters); one batch of {len(batch.dialogue_ids)} dialogues: "
              f"logits {tuple(out.logits.shape)}, loss terms "
              + ", ".join(f"{k}={float(v.detach()):.4f}" for k, v in terms.items()))
        if not torch.isfinite(sum(terms.values())):
            print("error: the loss of the test batch is not finite", file=sys.stderr)
            return 1
    return 0


def cmd_eval(args) -> int:
    from mercore import checkpoint as ckpt
    from mercore.recipe import build_recipe
    from mercore.plugins import get_registry
    from mercore.runs import read_run_recipe
    from mercore.train import build_components, evaluate

    target = Path(args.checkpoint)
    if (target / ckpt.META).exists():  # a checkpoint folder: RUN/checkpoints/NAME
        folder, run_dir = target, target.parent.parent
    else:
        run_dir = target
        folder = run_dir / "checkpoints" / "best"
    data = read_run_recipe(run_dir)
    recipe = build_recipe(data, get_registry(), source=str(run_dir / "recipe.yaml"))
    c = build_components(recipe)
    ckpt.load_weights(folder, c.model)
    if c.distiller is not None and (folder / "extra.safetensors").exists():
        ckpt.load_weights(folder, c.distiller, file="extra.safetensors")
    report, _ = evaluate(c, args.split, recipe.trainer.eval_batch_size, __import__("torch").device("cpu"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{folder} on {args.split}: accuracy {report['accuracy']:.4f}  weighted F1 {report['weighted_f1']:.4f}  "
              f"macro F1 {report['macro_f1']:.4f}")
        print("per-class F1: " + "  ".join(f"{k} {v:.3f}" for k, v in report["per_class_f1"].items()))
    return 0


def cmd_plugins(args) -> int:
    from mercore.plugins import get_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are shown in the listing itself
        ps = get_plugins()
    if args.json:
        print(json.dumps([attrs.asdict(p) for p in ps.plugins], indent=2))
        return 0
    for p in ps.plugins:
        dist = f"{p.distribution} {p.version}" if p.distribution else "(not from a distribution)"
        print(f"{p.name}  [{dist}]  {p.module}")
        if p.error:
            print(f"    FAILED TO LOAD: {p.error}")
            continue
        print(f"    hooks: {', '.join(p.hooks) or '(none)'}")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(p.components.items())) or "(none)"
        print(f"    components: {counts}")
    return 0


def cmd_list(args) -> int:
    from mercore.plugins import get_registry
    from mercore.registry import KINDS

    registry = get_registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        specs = registry.specs(kind)
        if not specs and not args.kind:
            continue
        print(f"{kind}:")
        for s in specs:
            print(f"  {s.name:<22} {s.doc[:70]}{'...' if len(s.doc) > 70 else ''}  [{s.plugin}]")
    return 0


def cmd_show(args) -> int:
    import typing

    from mercore.config import field_help, field_kind, type_name
    from mercore.plugins import get_registry

    spec = get_registry().get(args.kind, args.name)
    print(f"{spec.kind} {spec.name}  (plugin {spec.plugin})")
    import inspect

    doc = inspect.getdoc(spec.factory) or spec.doc
    if doc:
        print()
        print(doc)
    print()
    print("config:")
    hints = typing.get_type_hints(spec.config_cls)
    fields = attrs.fields(spec.config_cls)
    if not fields:
        print("  (no options)")
    for f in fields:
        if f.default is attrs.NOTHING:
            default = "(required)"
        elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            default = repr(f.default.factory())
        else:
            default = repr(f.default)
        kind = field_kind(f)
        tp = f"{kind} component" if kind else type_name(hints.get(f.name))
        print(f"  {f.name}: {tp} = {default}")
        if field_help(f):
            print(f"      {field_help(f)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mercore import __version__

    parser = argparse.ArgumentParser(prog="mercore", description="Multimodal emotion recognition in conversations: "
                                     "train and evaluate models assembled from plugins by YAML recipes.")
    parser.add_argument("--version", action="version", version=f"mercore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate a recipe", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="path to a YAML recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value or ~key.sub")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a recipe (exit 2 on errors) without training", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--build", action="store_true", help="also load the data, build the model and run one tiny batch")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint (a run directory = its best checkpoint)")
    p.add_argument("checkpoint", help="RUN_DIR or RUN_DIR/checkpoints/NAME")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="installed plugins with versions, hooks, components and load errors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("list", help="registered components, by kind")
    p.add_argument("kind", nargs="?", help="only this kind")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one component's config fields, defaults, docs and plugin")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_show)

    from mercore import compare, report, sweep

    sweep.add_parser(sub)
    report.add_parser(sub)
    compare.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code: 0 success, 1 run error, 2 config or usage error, 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error (code 2) or --help/--version (code 0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, RegistryError) as exc:
        _print_problems(exc)
        return 2
    except MercoreError as exc:
        _print_problems(exc)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
