"""Reference computations the tests compare the library against."""

from __future__ import annotations

import numpy as np


def naive_recall(images, texts, owner, ks):
    """The definition, literally: rank everything by (score desc, dataset order), look at top k."""

    def top(query, candidates, k):
        scored = [(-float(np.dot(query, c)), i) for i, c in enumerate(candidates)]
        return [i for _, i in sorted(scored)[:k]]

    t2i, i2t = {}, {}
    for k in ks:
        t2i[k] = sum(owner[t] in top(texts[t], images, k) for t in range(len(texts))) / len(texts)
        hits = 0
        for i in range(len(images)):
            found = top(images[i], texts, k)
            hits += any(owner[t] == i for t in found)
        i2t[k] = hits / len(images)
    return t2i, i2t
