"""
Annotators that read only the text, for corpora without label columns (annotate.py's
annotator='fields' reads the label columns instead, and lives there). Every one has the same two
steps, so that annotate.py can run it over a corpus of any size:

    a = ANNOTATORS[name](config)   # its settings from annotate.py's config
    a.fit(texts)                   # a bounded sample of chunk texts (annotate.py's annotator_docs)
    a(texts)                       # a batch of chunk texts -> one 'key:value ...' string per chunk

A fitted annotator is pickled to datasets' worker processes (num_proc), once per worker: what it
learns in fit should be small. `key` is the annotation key it writes (meta.json's annotation_keys).
"""
from common import UserError
from formats import format_annotation


class Keywords:
    """The top TF-IDF terms of every chunk: no labels needed, and high entropy, which is all the
    annotator must be (paper: it 'need not be accurate'). The IDF weights and the vocabulary are the
    fitted sample's: a word the sample never saw is never a keyword."""
    key = 'keyword'

    def __init__(self, config):
        self.per_chunk = config['keywords_per_chunk']

    def fit(self, texts):
        from sklearn.feature_extraction.text import TfidfVectorizer
        self.vec = TfidfVectorizer(stop_words='english', sublinear_tf=True, token_pattern=r'(?u)\b[^\W\d_]{3,}\b')
        try:
            self.vec.fit(texts)
        except ValueError:
            raise UserError("annotator 'keywords': the corpus has no usable words")
        self.vocab = self.vec.get_feature_names_out()
        return self

    def __call__(self, texts):
        X = self.vec.transform(texts).tocsr()
        out = []
        for i in range(X.shape[0]):
            row = slice(X.indptr[i], X.indptr[i + 1])
            terms = sorted(zip(-X.data[row], self.vocab[X.indices[row]]))  # ties: by term
            out.append(format_annotation((self.key, t) for _, t in terms[:self.per_chunk]))
        return out


ANNOTATORS = {'keywords': Keywords}
