"""The ``mercore`` command line: run, validate, eval, plugins, list, show, sweep, report, compare, extract,
predict.

Exit codes: 0 success; 1 a checkpoint, storage, training or file-access error; 2 a recipe, registry, data,
output_dir or usage error (the input needs fixing); 128 + signum when stopped by a signal after saving a
checkpoint (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); 141 stdout closed by its reader (``| head``).

A recipe is code: ``type: module:Class`` imports that module (see :mod:`mercore.code_guard`); modules that
are not from an installed package need ``--allow-local-code``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

import attrs

from mercore.errors import ConfigError, DataError, MercoreError, RegistryError

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
stages:
  a recipe's `stages:` (e.g. an IKD teacher) are trained first by `run`, which prints the stage plan;
  each inherits seed, data.root/data.path and trainer.device/precision/threads/progress unless its
  overrides set them. validate and eval never train a stage.
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
    from mercore.stages import run_with_stages

    loaded = _load(args)
    distributed.init_if_needed(loaded.recipe.trainer.device)
    results = run_with_stages(loaded)
    if distributed.rank() == 0:
        t = results["test"]
        print(f"test (epoch {results['best_epoch']}, selected on {results['selected_on']}): "
              f"accuracy {t['accuracy']:.4f}  weighted F1 {t['weighted_f1']:.4f}  macro F1 {t['macro_f1']:.4f}")
        print("per-class F1: " + "  ".join(f"{k} {v:.3f}" for k, v in t["per_class_f1"].items()))
        print(f"run directory: {loaded.recipe.output_dir}")
    return 0


def cmd_validate(args) -> int:
    from mercore.stages import format_plan, plan_stages

    loaded = _load(args)
    plan = plan_stages(loaded)  # validates every stage's recipe too; trains nothing
    print(f"{args.recipe}: valid")
    if plan:
        print("\n".join(format_plan(plan, loaded)))
        print("(validate trains nothing: `mercore run` trains the stages that are not finished)")
    if args.build:
        import torch

        from mercore.data.types import iterate_batches
        from mercore.stages import unfinished
        from mercore.train import build_components, forward_batch, seed_everything

        missing = unfinished(plan)
        if missing and loaded.recipe.distiller is not None:
            raise ConfigError([f"stages.{st.name}: {st.run_dir} is not finished ({st.state}), so the components "
                               f"that load it cannot be built; make it with `mercore run {args.recipe}` (all stages), "
                               f"or alone with `{st.command}`" for st in missing])
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
    from mercore.runs import load_run_recipe, load_run_weights, locate_checkpoint, require_run_data
    from mercore.train import apply_thread_policy, build_components, evaluate, model_guides_at_eval, resolve_device

    run_dir, folder = locate_checkpoint(args.checkpoint)
    recipe, _ = load_run_recipe(run_dir)  # data paths as recorded at training where they still exist
    require_run_data(run_dir, recipe)  # a missing data set is named, with where the run was trained
    # Trains nothing: the distiller (and so a teacher run) is built only for a model that the teacher guides at
    # evaluation, and then it only loads a finished teacher.
    if recipe.distiller is not None and model_guides_at_eval(recipe):
        print("note: the model lets the teacher guide at evaluation (model.guide_at_eval), so eval loads the "
              "distiller's teacher run", file=sys.stderr)
    device = resolve_device(args.device, where="--device")  # before loading anything: a missing CUDA is a usage error
    apply_thread_policy(recipe.trainer.threads)
    c = build_components(recipe, for_eval=True)
    load_run_weights(folder, c.model, c.distiller)
    c.model.to(device)
    if c.distiller is not None:
        c.distiller.to(device)
    report, _ = evaluate(c, args.split, recipe.trainer.eval_batch_size, device, recipe.trainer.precision)
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
    """What a plugin author needs about one component: docs, config, build-time context, output, protocols."""
    import inspect

    from mercore.plugins import get_registry

    spec = get_registry().get(args.kind, args.name)
    print(f"{spec.kind} {spec.name}  (plugin {spec.plugin})")
    doc = inspect.getdoc(spec.factory) or spec.doc
    if doc:
        print()
        print(doc)
    print()
    _show_config(spec.config_cls)
    print()
    _show_contract(spec)
    return 0


def _show_config(config_cls: type) -> None:
    import typing

    from mercore.config import field_help, field_kind, type_name

    print("config:")
    hints = typing.get_type_hints(config_cls)
    fields = attrs.fields(config_cls)
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


def _where(path: str) -> str:
    """``Name (defined in module)`` for a dotted path."""
    module, _, name = path.rpartition(".")
    return f"{name} (defined in {module})"


def _show_contract(spec) -> None:
    from mercore.kinds import KIND_CONTRACTS, declared_capabilities, is_type_path

    contract = KIND_CONTRACTS[spec.kind]
    print(f"build context: called as factory(config, **context) by {contract.built_by}; context holds")
    if not contract.context:
        print("  (nothing)")
    for arg in contract.context:
        print(f"  {arg.name}: {arg.type}  {arg.help}")
    print()
    returns = contract.returns
    if is_type_path(returns):
        head, _, rest = returns.partition(" ")
        returns = f"{_where(head)} {rest}".rstrip()
    print(f"returns: {returns}")
    if contract.protocol:
        print(f"protocol: {_where(contract.protocol)}")
    if contract.capabilities:
        print("optional capabilities (declared by implementing the protocol's methods):")
        for path, has in declared_capabilities(spec.factory, contract).items():
            print(f"  {_where(path)}: {'yes' if has else 'no'}")
    factory = spec.factory
    print(f"implemented by: {getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}")


def _add_local_code_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-local-code", action="store_true",
                   help="let 'type: module:Class' import modules that are not from an installed package (e.g. a "
                        "module in the current folder). A recipe, and a run folder's recipe.yaml, is code: only "
                        "pass this for recipes you trust (same as MERCORE_ALLOW_LOCAL_CODE=1)")


def _parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse with options and overrides in any order (``validate R --build a=1`` as well as ``validate R a=1 --build``).

    argparse stops a ``nargs="*"`` positional at the first option, so overrides after an option come back as
    unknown arguments; those that are not options are overrides. ``parse_intermixed_args`` would do this but
    does not support sub-commands.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *(a for a in extra if not a.startswith("-"))]
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def build_parser() -> argparse.ArgumentParser:
    from mercore import __version__

    parser = argparse.ArgumentParser(prog="mercore", description="Multimodal emotion recognition in conversations: "
                                     "train and evaluate models assembled from plugins by YAML recipes.")
    parser.add_argument("--version", action="version", version=f"mercore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate a recipe (its unfinished stages first)", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="path to a YAML recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value or ~key.sub")
    _add_local_code_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a recipe and its stages (exit 2 on errors) without training",
                       epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--build", action="store_true", help="also load the data, build the model and run one tiny batch")
    _add_local_code_flag(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint (a run directory = its best checkpoint)")
    p.add_argument("checkpoint", help="RUN_DIR or RUN_DIR/checkpoints/NAME")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when available, "
                                                    "else the CPU); the run's trainer.precision applies")
    _add_local_code_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="installed plugins with versions, hooks, components and load errors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("list", help="registered components, by kind")
    p.add_argument("kind", nargs="?", help="only this kind")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one component's docs, config, build-time context, output type, protocols "
                                    "and optional capabilities")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_show)

    from mercore import compare, report, sweep

    sweep.add_parser(sub)
    report.add_parser(sub)
    compare.add_parser(sub)
    from mercore import extract
    extract.add_parser(sub)
    from mercore import predict

    predict.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code: 0 success, 1 run or file-access error, 2 config, data or usage error,
    128 + signum stopped by a signal (130 Ctrl-C), 141 stdout closed by its reader."""
    from mercore.threads import set_wait_policy_env

    set_wait_policy_env()  # before anything imports torch: OpenMP reads its wait policy once, when it loads
    try:
        args = _parse_args(build_parser(), argv)
    except SystemExit as exc:  # argparse already printed the usage error (code 2) or --help/--version (code 0)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "allow_local_code", False):
        from mercore.code_guard import allow_local_code

        allow_local_code()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below, not at interpreter exit
        return code
    except (ConfigError, RegistryError, DataError) as exc:  # the user's recipe, plugins or data: fix the input
        _print_problems(exc)
        return 2
    except MercoreError as exc:
        _print_problems(exc)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or a RunInterrupted from SIGTERM/SIGHUP: exit 128 + signum
        print(f"interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:
        # The reader went away (``mercore show ... | head``): stop quietly, as a command killed by SIGPIPE would.
        # stdout is pointed at /dev/null so that Python's flush at exit does not fail a second time.
        _silence_stdout()
        return 141
    except OSError as exc:
        # An operating-system error not wrapped where it happened (a permission, a vanished file): the path and
        # the reason, not a traceback.
        name = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"error: cannot access{name}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
