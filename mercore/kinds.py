"""What each kind of component promises and receives: the build-time context, the output, the protocols.

A factory is called as ``factory(config, **context)``. :data:`KIND_CONTRACTS` declares, per kind, exactly the
keyword arguments the engine passes as ``context`` (found at every ``Node.build`` call of the engine and the
``multimodal`` model; ``tests/engine/test_kind_contracts.py`` records the real calls and compares), what the
built component returns, and the protocols of :mod:`mercore.nn` it satisfies, with the optional capability
protocols it may declare. ``mercore show KIND NAME`` prints all of it.

Types are named by dotted path and resolved only when shown, so the registry stays free of torch imports.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ContextArg:
    """One keyword argument of the build-time context.

    Attributes:
        name: the keyword.
        type: its type as written in an annotation (``int``, ``dict[str, int]`` ...).
        help: what it holds.
    """

    name: str
    type: str
    help: str


@attrs.frozen
class KindContract:
    """The contract of one component kind.

    Attributes:
        kind: the kind's name (a key of :data:`KIND_CONTRACTS`).
        context: the keyword arguments every factory of this kind receives, in the engine's order.
        returns: what the built component's call returns (a dotted type path, or a shape in words).
        protocol: the dotted path of the :mod:`mercore.nn` protocol the built component satisfies, or None
            (optimizers and schedulers are torch's own types).
        capabilities: dotted paths of optional capability protocols a component of this kind may declare.
        built_by: where the engine builds it (for the reader of ``mercore show``).
    """

    kind: str
    context: tuple[ContextArg, ...]
    returns: str
    protocol: str | None
    capabilities: tuple[str, ...] = ()
    built_by: str = ""

    @property
    def context_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.context)


def _args(*triples: tuple[str, str, str]) -> tuple[ContextArg, ...]:
    return tuple(ContextArg(*t) for t in triples)


_MODEL_CONTEXT = (
    ("modality_dims", "dict[str, int]", "feature width D_m of every modality the data provides"),
    ("num_classes", "int", "number of emotion classes C"),
    ("num_speakers", "int", "size of the data's speaker table S"),
    ("label_names", "list[str]", "the C class names, in label-index order"),
)

#: Every kind a recipe can name, with its contract. ``model`` assembles the others.
KIND_CONTRACTS: dict[str, KindContract] = {c.kind: c for c in (
    KindContract(
        "model", _args(*_MODEL_CONTEXT), returns="mercore.nn.model.ModelOutput", protocol="mercore.nn.model.Model",
        built_by="the trainer, `mercore eval` and mercore.load (from the recipe's `model`)"),
    KindContract(
        "encoder",
        _args(("input_dim", "int", "feature width D_m of this encoder's modality"),
              ("hidden", "int", "output width H (the model's hidden)"),
              ("num_speakers", "int", "size of the data's speaker table S"),
              ("name", "str", "the modality it encodes (one encoder per modality)")),
        returns="(B, T, H) tensor", protocol="mercore.nn.encoder.Encoder",
        capabilities=("mercore.nn.encoder.AttentionEncoder",), built_by="the multimodal model, once per modality"),
    KindContract(
        "fusion",
        _args(("modalities", "list[str]", "the modalities whose views it fuses, in the model's order"),
              ("hidden", "int", "width H of every view and of the fused sequence"),
              ("num_classes", "int", "number of emotion classes C"),
              ("name", "str", "prefix of its loss and stat keys ('fusion')")),
        returns="mercore.nn.fusion.FusionOutput", protocol="mercore.nn.fusion.Fusion",
        capabilities=("mercore.nn.fusion.GuidableFusion",), built_by="the multimodal model (2+ modalities)"),
    KindContract(
        "router",
        _args(("dim", "int", "width D of the tokens it routes"),
              ("num_experts", "int", "number of experts E")),
        returns="mercore.nn.moe.Routing", protocol="mercore.nn.moe.Router", built_by="a moe component (sdmoe)"),
    KindContract(
        "experts",
        _args(("dim", "int", "width D of the tokens in and out"),
              ("num_experts", "int", "number of experts E")),
        returns="(B, T, D) tensor", protocol="mercore.nn.moe.Experts", built_by="a moe component (sdmoe)"),
    KindContract(
        "moe",
        _args(("dim", "int", "width D of the sequence in and out"),
              ("name", "str", "prefix of its loss and stat keys (e.g. 'text.moe', 'fusion.global_moe')")),
        returns="mercore.nn.moe.MoEOutput", protocol="mercore.nn.moe.MoE",
        built_by="the multimodal model (per modality) and the hcmf fusion (global_moe)"),
    KindContract(
        "head",
        _args(("hidden", "int", "width H of the features it classifies"),
              ("num_classes", "int", "number of emotion classes C")),
        returns="(B, T, C) tensor", protocol="mercore.nn.model.Head",
        built_by="the multimodal model (and once per modality with unimodal_heads)"),
    KindContract(
        "distiller",
        _args(("student", "torch.nn.Module", "the built model it distils into"), *_MODEL_CONTEXT),
        returns="dict[str, torch.Tensor]", protocol="mercore.nn.training.Distiller",
        built_by="the trainer and `mercore eval` (from the recipe's `distiller`)"),
    KindContract(
        "dataset", (), returns="mercore.data.types.Corpus (from .load())", protocol="mercore.nn.training.Dataset",
        capabilities=("mercore.nn.training.FeatureFileDataset",),
        built_by="the trainer, `mercore eval` and mercore.load (from the recipe's `data`)"),
    KindContract(
        "loss",
        _args(("num_classes", "int", "number of emotion classes C"),
              ("train_label_counts", "torch.Tensor", "(C,) long: label counts of the training split")),
        returns="scalar tensor", protocol="mercore.nn.training.Loss", built_by="the trainer"),
    KindContract(
        "optimizer",
        _args(("params", "list[tuple[str, torch.nn.Parameter]]",
               "named parameters of the model and the distiller, the trainable ones to optimise")),
        returns="torch.optim.Optimizer", protocol=None, built_by="the trainer"),
    KindContract(
        "scheduler",
        _args(("optimizer", "torch.optim.Optimizer", "the run's optimizer"),
              ("total_steps", "int", "optimizer steps of the whole run")),
        returns="torch.optim.lr_scheduler.LRScheduler", protocol=None, built_by="the trainer (stepped once per step)"),
    KindContract(
        "logger",
        _args(("run_dir", "pathlib.Path", "the run directory (it exists)"),
              ("log", "Callable[[str], None]", "the trainer's message printer (for notes to the user)")),
        returns="nothing (log_epoch(record) stores one record per epoch)", protocol="mercore.nn.logger.Logger",
        capabilities=("mercore.nn.logger.RecordReader",),
        built_by="the trainer, on rank 0 (from the recipe's `logger`: one node or a list)"),
    KindContract(
        "extractor", (), returns="list[torch.Tensor] (from .extract(conversations)), one (T, D) per conversation",
        protocol="mercore.nn.extractor.Extractor", capabilities=("mercore.nn.extractor.FittableExtractor",),
        built_by="`mercore extract` and `mercore predict`"),
)}

#: The kinds of component a recipe can name, in the order ``mercore list`` shows them.
KINDS: tuple[str, ...] = tuple(KIND_CONTRACTS)



def resolve(path: str) -> object:
    """The object a dotted ``module.attr`` path names (a contract's type or protocol)."""
    import importlib

    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def is_type_path(text: str) -> bool:
    """Whether a contract's ``returns`` names a type by dotted path (else it describes a shape in words)."""
    head = text.split(" ", 1)[0]
    return "." in head and head.replace(".", "").replace("_", "").isalnum()


def capability_methods(protocol: type) -> list[str]:
    """The methods a capability protocol adds to its base: what a component implements to declare it."""
    own = vars(protocol)
    return sorted(n for n, v in own.items() if callable(v) and not n.startswith("_"))


def declared_capabilities(factory: object, contract: KindContract) -> dict[str, bool]:
    """For each optional capability of the kind: does the component's class implement its methods?

    Read from the class (nothing is built), so only methods count; data members such as
    :attr:`mercore.nn.GuidableFusion.anchor` are checked on the built instance by ``isinstance``.
    """
    out = {}
    for path in contract.capabilities:
        methods = capability_methods(resolve(path))  # type: ignore[arg-type]
        out[path] = isinstance(factory, type) and all(callable(getattr(factory, m, None)) for m in methods)
    return out


__all__ = ["KINDS", "KIND_CONTRACTS", "ContextArg", "KindContract", "capability_methods", "declared_capabilities",
           "is_type_path", "resolve"]
