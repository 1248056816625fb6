"""The ``npz`` member of a sample from whichever embedding models a preset runs.

CLIP gives the image embedding when the preset has one; the texts' token features come from the
preset's sentence encoder when it names one, else from CLIP's text tower. Extraction
(``stages.EmbedStage``) and on-the-fly priors (``restore.priors_online``) both call ``embed``, so
a sample's embeddings are the same whichever way they were made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.models.presets import Preset


class Embedder:
    """The preset's CLIP and sentence encoder, loaded once; None of either when it runs none."""

    def __init__(self, models: Preset):
        self.clip = self.text = None
        if models.clip is not None:
            from pipeline.models.clip import load_clip

            self.clip = load_clip(models.clip)
        if models.text is not None:
            from pipeline.models.text_encoder import load_text_encoder

            self.text = load_text_encoder(models.text)

    @property
    def active(self) -> bool:
        return self.clip is not None or self.text is not None

    @property
    def token_dim(self) -> int:
        """W: width of the text token features."""
        return self.text.token_dim if self.text is not None else self.clip.token_dim

    def provenance(self) -> dict:
        """CLIP's provenance, with the sentence encoder's under ``text``; the encoder's alone without CLIP."""
        if self.clip is None:
            return self.text.provenance()
        out = self.clip.provenance()
        if self.text is not None:
            out["text"] = self.text.provenance()
        return out

    def embed(self, images: Sequence[np.ndarray], captions: Sequence[str],
              degradation_texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """One embeddings dict (sample_format.EMBEDDINGS; no ``clip_image`` without CLIP) per image."""
        texts = self.text if self.text is not None else self.clip
        cap, cap_len = texts.embed_text_tokens(list(captions))
        deg, deg_len = texts.embed_text_tokens(list(degradation_texts))
        out = [{"caption_tokens": cap[i], "caption_length": np.int32(cap_len[i]),
                "degradation_tokens": deg[i], "degradation_length": np.int32(deg_len[i])}
               for i in range(len(captions))]
        if self.clip is not None:
            for entry, image in zip(out, self.clip.embed_images(list(images))):
                entry["clip_image"] = image
        return out
