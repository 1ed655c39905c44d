"""Registers the ``extractor`` components: ``sentence_encoder``, ``finetuned_encoder`` and ``opensmile``."""

from mercore.hookspecs import hookimpl


@hookimpl
def register_components(register):
    # These modules import nothing heavy at import time (transformers and opensmile load when an extractor is
    # built), so listing plugins stays cheap and works without the `extract` extra.
    from mercore_extract.audio import OpenSmileExtractor
    from mercore_extract.finetuned import FinetunedEncoder
    from mercore_extract.sentence_encoder import SentenceEncoder

    register("extractor", "sentence_encoder", SentenceEncoder)
    register("extractor", "finetuned_encoder", FinetunedEncoder)
    register("extractor", "opensmile", OpenSmileExtractor)
