"""``mercore predict RUN_DIR INPUT``: the emotions of new conversations, from a trained run folder alone.

INPUT is a ``dialogues.jsonl`` (``dialogue``, ``speakers``, ``texts``, optional ``audio``; ``labels`` and other
keys are ignored) or a plain text file of ``Speaker: utterance`` lines (one conversation; blank lines and lines
starting with ``#`` are skipped). Each modality's features are computed by the extractor its training
features were made with, rebuilt from the run's ``run_info.json`` (the same weights, or an error); the trained
model then gives per-utterance probabilities. A run with a distiller predicts with its student alone.

Speakers are numbered per conversation in order of first appearance, as the ``jsonl`` dataset numbers them
in training, and clipped to the run's speaker table (later speakers share its last row, as in training).

In Python: ``mercore.load(RUN_DIR).predict(conversation)`` (see :class:`ConversationPrediction`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from mercore.data import checks
from mercore.data.json_lines import json_object
from mercore.data.types import PAD_LABEL, Dialogue, iterate_batches
from mercore.errors import ConfigError, DataError
from mercore.nn.extractor import Conversation, Extractor

if TYPE_CHECKING:
    from mercore.runs import LoadedRun


@attrs.frozen
class UtterancePrediction:
    """One utterance's prediction.

    Attributes:
        index: its position in the conversation (0-based).
        speaker, text: as given.
        label: the most probable label; ``probability`` its probability.
        probabilities: every label name -> its probability (in the run's label order; they sum to 1).
    """

    index: int
    speaker: str
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


@attrs.frozen
class ConversationPrediction:
    """The predictions of one conversation, one :class:`UtterancePrediction` per utterance, in order."""

    dialogue: str
    utterances: tuple[UtterancePrediction, ...]

    @property
    def labels(self) -> list[str]:
        return [u.label for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)


# -- speakers and input ------------------------------------------------------------------------------------

def speaker_indices(conversation: Conversation, num_speakers: int) -> torch.Tensor:
    """``(T,)`` long: speakers numbered in order of first appearance (0 = first to speak), as the ``jsonl``
    dataset numbers them, with speakers past the run's table clipped to its last row (as in training)."""
    raw = checks.speaker_indices(list(conversation.speakers), file="<conversation>", dialogue_id=conversation.dialogue,
                                 field="speakers")
    return raw.clamp(max=max(num_speakers, 1) - 1)


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of INPUT: a ``.jsonl`` file (or any file whose first non-blank character is ``{``)
    of dialogues, else a text file of ``Speaker: utterance`` lines (one conversation, named after the file).

    Raises:
        DataError: the file is missing or malformed, naming ``file:line``.
    """
    path = checks.require_file(checks.resolve_path(str(path)), "input file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte at offset {exc.start}); save the file as UTF-8") from None
    lines = text.splitlines()
    first = next((ln.lstrip() for ln in lines if ln.strip()), "")
    conversations = (_read_jsonl(path, lines) if path.suffix == ".jsonl" or first.startswith("{")
                     else _read_speaker_lines(path, lines))
    if not conversations:
        raise DataError(f"{path}: no utterances in the file (expected 'Speaker: utterance' lines or JSON Lines)")
    return conversations


def _read_speaker_lines(path: Path, lines: list[str]) -> list[Conversation]:
    speakers, texts = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        speaker, colon, utterance = line.partition(":")
        if not colon or not speaker.strip() or not utterance.strip():
            raise DataError(f"{path}:{n}: expected 'Speaker: utterance' (a speaker, a colon, then the text), "
                            f"got {line.strip()!r}")
        speakers.append(speaker.strip())
        texts.append(utterance.strip())
    return [Conversation(dialogue=path.stem, speakers=tuple(speakers), texts=tuple(texts))] if texts else []


def _read_jsonl(path: Path, lines: list[str]) -> list[Conversation]:
    out, seen = [], {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        row = json_object(line, where)
        did = str(row.get("dialogue", f"{path.stem}:{n}"))
        for key in ("speakers", "texts"):
            value = row.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise DataError(f"{where}: dialogue {did!r}: {key!r} must be a list of non-empty strings, "
                                f"got {value!r}")
        audio = row.get("audio")
        if audio is not None and not (isinstance(audio, list) and all(a is None or isinstance(a, str) for a in audio)):
            raise DataError(f"{where}: dialogue {did!r}: 'audio' must be a list of paths (or null), got {audio!r}")
        if did in seen:
            raise DataError(f"{where}: duplicate dialogue id {did!r} (first on line {seen[did]})")
        seen[did] = n
        try:
            out.append(Conversation(dialogue=did, speakers=tuple(row["speakers"]), texts=tuple(row["texts"]),
                                    audio=tuple(audio) if audio is not None else None))
        except ValueError as exc:  # lists of different lengths
            raise DataError(f"{where}: {exc}") from None
        if not len(out[-1]):
            raise DataError(f"{where}: dialogue {did!r} has no utterances")
    return out


# -- extractors --------------------------------------------------------------------------------------------

def run_extractors(loaded: "LoadedRun") -> dict[str, Extractor]:
    """Each modality's extractor, rebuilt from what the run recorded (cached on ``loaded``).

    Raises:
        DataError: a modality's features cannot be recomputed (a pickle, or a file naming no extractor), or the
            rebuilt extractor gives features of another width than the model was trained on.
    """
    if loaded._extractors:
        return loaded._extractors
    from mercore.extract import extractor_from_identity
    from mercore.plugins import get_registry
    from mercore.run_info import feature_sources

    if loaded.info is not None:
        sources = loaded.info.features
    else:  # a run from before run_info.json: read the identities from its feature files, if they are there
        sources = feature_sources(loaded.recipe.data.build(), list(loaded.modality_dims))
    registry = get_registry()
    extractors: dict[str, Extractor] = {}
    for m, dim in loaded.modality_dims.items():
        source = sources.get(m)
        if source is None or source.identity is None:
            reason = source.reason if source is not None else "the run recorded no feature source for it"
            raise DataError(
                f"{loaded.run_dir}: the run was trained on {m!r} features that cannot be recomputed for new "
                f"conversations: {reason}. Predicting needs a run trained on features that `mercore extract` "
                "made (their file records the extractor).")
        extractor = extractor_from_identity(source.identity, registry)
        if extractor.dim != dim:
            raise DataError(f"{loaded.run_dir}: the {m!r} extractor {source.identity.get('extractor')!r} gives "
                            f"{extractor.dim}-dim features but the model was trained on {dim}-dim ones")
        extractors[m] = extractor
    loaded._extractors.update(extractors)
    return extractors


# -- prediction --------------------------------------------------------------------------------------------

def _dialogues(loaded: "LoadedRun", conversations: Sequence[Conversation]) -> list[Dialogue]:
    """The conversations as unlabelled dialogues with every modality's features."""
    features: dict[str, list[torch.Tensor]] = {}
    for m, extractor in run_extractors(loaded).items():
        rows = extractor.extract(conversations)
        for conv, f in zip(conversations, rows):
            if tuple(f.shape) != (len(conv), loaded.modality_dims[m]):
                raise DataError(f"dialogue {conv.dialogue!r}: the {m!r} extractor returned features of shape "
                                f"{tuple(f.shape)}, expected ({len(conv)}, {loaded.modality_dims[m]})")
        features[m] = rows
    return [Dialogue(id=conv.dialogue, features={m: features[m][i].float() for m in features},
                     speakers=speaker_indices(conv, loaded.num_speakers),
                     labels=torch.full((len(conv),), PAD_LABEL, dtype=torch.long))
            for i, conv in enumerate(conversations)]


@torch.no_grad()
def predict_run(loaded: "LoadedRun", conversations: Conversation | Sequence[Conversation]
                ) -> ConversationPrediction | list[ConversationPrediction]:
    """:meth:`mercore.runs.LoadedRun.predict`: one prediction per conversation (a single one for one)."""
    from mercore.train import model_guides_at_eval

    single = isinstance(conversations, Conversation)
    convs = [conversations] if single else list(conversations)
    if not all(isinstance(c, Conversation) for c in convs):
        raise TypeError("predict takes a mercore.nn.Conversation or a list of them")
    if model_guides_at_eval(loaded.recipe):
        raise ConfigError([f"{loaded.run_dir}: the model lets its teacher guide it at evaluation "
                           "(model.guide_at_eval), so it cannot predict with its student alone"])
    names = loaded.label_names
    out: list[ConversationPrediction] = []
    if convs:
        dialogues = _dialogues(loaded, convs)
        loaded.model.eval()
        per_conversation: list[torch.Tensor] = []  # (T_i, C) each, in input order (batches keep the order)
        for batch in iterate_batches(dialogues, list(loaded.modality_dims), loaded.recipe.trainer.eval_batch_size):
            probs = torch.softmax(loaded.model(batch).logits.float(), dim=-1)  # (B, T, C)
            per_conversation.extend(probs[b, : int(n)] for b, n in enumerate(batch.mask.sum(1).tolist()))
        out = [_conversation_prediction(conv, p, names) for conv, p in zip(convs, per_conversation)]
    return out[0] if single else out


def _conversation_prediction(conv: Conversation, probs: torch.Tensor, names: list[str]) -> ConversationPrediction:
    utterances = []
    for t, row in enumerate(probs.tolist()):
        top = max(range(len(row)), key=row.__getitem__)
        utterances.append(UtterancePrediction(index=t, speaker=conv.speakers[t], text=conv.texts[t], label=names[top],
                                              probability=row[top], probabilities=dict(zip(names, row))))
    return ConversationPrediction(dialogue=conv.dialogue, utterances=tuple(utterances))


# -- the command -------------------------------------------------------------------------------------------

def format_prediction(pred: ConversationPrediction) -> list[str]:
    """Human-readable lines: the dialogue, then per utterance its number, speaker, label, probability, text."""
    width = max((len(u.speaker) for u in pred.utterances), default=0)
    label_width = max((len(u.label) for u in pred.utterances), default=0)
    lines = [f"{pred.dialogue} ({len(pred)} utterances)"]
    for u in pred.utterances:
        lines.append(f"  {u.index + 1:>3}  {u.speaker:<{width}}  {u.label:<{label_width}}  {u.probability:.2f}  "
                     f"{u.text}")
    return lines


def prediction_records(pred: ConversationPrediction) -> list[dict[str, Any]]:
    """``--json``: one object per utterance (JSON Lines)."""
    return [{"dialogue": pred.dialogue, "index": u.index, "speaker": u.speaker, "text": u.text, "label": u.label,
             "probability": u.probability, "probabilities": u.probabilities} for u in pred.utterances]


def cmd_predict(args: argparse.Namespace) -> int:
    from mercore.runs import load_run

    conversations = read_conversations(args.input)  # a bad input fails before the model and extractor load
    loaded = load_run(args.run_dir, checkpoint={"best": "best", "last": "latest"}[args.checkpoint])
    predictions = loaded.predict(conversations)
    for i, pred in enumerate(predictions):
        if args.json:
            sys.stdout.write("".join(json.dumps(r) + "\n" for r in prediction_records(pred)))
        else:
            print(("\n" if i else "") + "\n".join(format_prediction(pred)))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="emotions of new conversations from a trained run (features by the run's extractor)",
        description="Per-utterance emotions of new conversations: INPUT's features are computed by the extractor\n"
                    "that made the run's training features, then the run's model predicts. Works from the run\n"
                    "folder alone (a copy, from any folder, without the training data).",
        epilog="INPUT: a dialogues.jsonl ({\"dialogue\", \"speakers\", \"texts\"} per line; labels ignored), or a\n"
               "  text file of 'Speaker: utterance' lines (one conversation; blank and '#' lines skipped).\n"
               "output: per utterance its number, speaker, top label, that label's probability and the text;\n"
               "  --json: one JSON object per utterance (JSON Lines) with dialogue, index, speaker, text, label,\n"
               "  probability and probabilities (every label's).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (trained by `mercore run`)")
    p.add_argument("input", help="dialogues.jsonl, or a text file of 'Speaker: utterance' lines")
    p.add_argument("--json", action="store_true", help="one JSON object per utterance with every label's probability")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="best: the dev-selected checkpoint (default); last: the latest one")
    p.add_argument("--allow-local-code", action="store_true",
                   help="let the run's recipe import modules that are not from an installed package (see `run`)")
    p.set_defaults(func=cmd_predict)


__all__ = ["ConversationPrediction", "UtterancePrediction", "predict_run", "read_conversations", "speaker_indices",
           "add_parser"]
