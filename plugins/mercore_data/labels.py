"""Class orders of the standard corpora (index = class id in the feature pickles and in mercore)."""

from __future__ import annotations

#: IEMOCAP 6-way, the order of the MMGCN/SDT pickles: {'hap':0, 'sad':1, 'neu':2, 'ang':3, 'exc':4, 'fru':5}.
IEMOCAP_LABELS: list[str] = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
#: MELD 7-way, the order of the MELD pickles: {'neutral': 0, 'surprise': 1, 'fear': 2, 'sadness': 3, 'joy': 4,
#: 'disgust': 5, 'anger': 6}.
MELD_LABELS: list[str] = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
#: MELD 3-way sentiment, the order of the pickles' last item: {'neutral': 0, 'positive': 1, 'negative': 2}.
MELD_SENTIMENTS: list[str] = ["neutral", "positive", "negative"]

#: Utterances per class over all splits of ../shared/data (used for the synthetic class imbalance).
IEMOCAP_COUNTS: list[int] = [648, 1084, 1708, 1103, 1041, 1849]
MELD_COUNTS: list[int] = [6436, 1636, 358, 1002, 2308, 361, 1607]

KNOWN_LABELS: dict[str, list[str]] = {"iemocap": IEMOCAP_LABELS, "meld": MELD_LABELS}
