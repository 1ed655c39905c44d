"""Every contract between the engine and component plugins, and the layers plugins share.

A plugin imports from here (and from :mod:`mercore.config`, :mod:`mercore.errors`, :mod:`mercore.data.types`)
and from no other plugin. Per kind, the module holding its contract; ``mercore show KIND NAME`` prints the
same for one component, with the build-time context its factory receives (declared in :mod:`mercore.kinds`):

============  ===============================  ================================================================
kind          protocol (optional capability)   returns
============  ===============================  ================================================================
model         :class:`Model`                   :class:`ModelOutput`
encoder       :class:`Encoder`                 ``(B, T, H)`` tensor
              (:class:`AttentionEncoder`)      ``forward_with_attention``: ``(h, attn (B, heads, T, T))``
fusion        :class:`Fusion`                  :class:`FusionOutput`
              (:class:`GuidableFusion`)        ``forward_guided`` with a teacher's attention
router        :class:`Router`                  :class:`Routing`
experts       :class:`Experts`                 ``(B, T, D)`` tensor
moe           :class:`MoE`                     :class:`MoEOutput`
head          :class:`Head`                    ``(B, T, C)`` tensor
distiller     :class:`Distiller`               ``{name: scalar}``
dataset       :class:`Dataset`                 :class:`mercore.data.types.Corpus`
loss          :class:`Loss`                    scalar tensor
extractor     :class:`Extractor`               one ``(T, D)`` tensor per :class:`Conversation`
              (:class:`FittableExtractor`)     ``fit`` on labelled train/dev conversations first (fine-tuning)
logger        :class:`Logger`                  nothing: ``log_epoch(record)`` stores the epoch's record
              (:class:`RecordReader`)          ``read_records``: the records back
============  ===============================  ================================================================

Optional capabilities are declared, not probed: a component has one when it implements the capability
protocol's members (``isinstance(encoder, AttentionEncoder)``), and the engine relies on nothing else.

Shared layers: :mod:`mercore.nn.layers` (attention that returns its weights, pre-norm Transformer layers,
positions), :mod:`mercore.nn.gates` (SDT's gates), :mod:`mercore.nn.embedding` (the utterance embedding),
:mod:`mercore.nn.masking` (padding helpers). The ``multimodal`` model assembler is :mod:`mercore.nn.multimodal`.
"""

from mercore.nn.embedding import EmbeddingConfig, UtteranceEmbedding
from mercore.nn.encoder import AttentionEncoder, Encoder
from mercore.nn.extractor import Conversation, Extractor, FittableExtractor
from mercore.nn.fusion import Fusion, FusionOutput, GuidableFusion, check_fusion_modalities
from mercore.nn.gates import ModalityGate, UnimodalGate
from mercore.nn.logger import Logger, RecordReader
from mercore.nn.layers import FeedForward, LogitHook, MultiHeadAttention, TransformerLayer, sinusoidal_positions
from mercore.nn.masking import masked_mean, zero_padding
from mercore.nn.model import Head, Model, ModelOutput
from mercore.nn.moe import Experts, MoE, MoEOutput, Router, Routing
from mercore.nn.training import Dataset, Distiller, FeatureFileDataset, Loss

__all__ = [
    "AttentionEncoder",
    "Conversation",
    "Dataset",
    "Distiller",
    "EmbeddingConfig",
    "Encoder",
    "Experts",
    "Extractor",
    "FeatureFileDataset",
    "FittableExtractor",
    "FeedForward",
    "Fusion",
    "FusionOutput",
    "GuidableFusion",
    "Head",
    "LogitHook",
    "Logger",
    "Loss",
    "ModalityGate",
    "Model",
    "ModelOutput",
    "MoE",
    "MoEOutput",
    "MultiHeadAttention",
    "RecordReader",
    "Router",
    "Routing",
    "TransformerLayer",
    "UnimodalGate",
    "UtteranceEmbedding",
    "check_fusion_modalities",
    "masked_mean",
    "sinusoidal_positions",
    "zero_padding",
]
