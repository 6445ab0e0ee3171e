"""Knowledge: what participants compute on the public data and how they learn from it.

* ``topk``: top-k next-token logits per position and the answer's total NLL per sample.
* ``selection``: which teacher each sample is distilled from (dualmince, fate, weighted).
* ``kd_loss``: sparse KD losses (never a dense [batch, length, vocab] target) and
  ``λ·CE + (1-λ)·KD``.
* ``vocab_ops``: the shared log-partition + gather over the vocabulary behind both.

Import from the modules themselves; this package imports nothing so that ``selection`` stays
usable without torch being loaded.
"""
