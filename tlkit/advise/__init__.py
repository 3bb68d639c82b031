"""Which cell of the transfer-learning matrix a dataset falls in, and which frozen probe to fit.

One measurement serves advice and training alike:

* **size**: labelled training images per class, against :data:`SMALL_PER_CLASS` (and the total
  against :data:`LARGE_TOTAL`, since many classes with few images each still give a backbone
  plenty to adapt to);
* **candidates**: the pooled features of every stage of the frozen backbone, the final pooled
  features (``top``) and the concatenation of ``top`` with the best deep earlier stage (a
  multi-stage probe, cf. Head2Toe, Evci et al. 2022) are each scored by the exact probe of
  :mod:`tlkit.probe` (standardised multinomial logistic regression, L2 strength chosen on the
  folds) on the *same* repeated stratified folds over every labelled image;
* **the choice**: the best candidate among the deep ones (``top``, the concatenation and the
  two deepest stages); a shallower stage replaces it only when it wins by more than the noise
  (twice the corrected resampled standard error of the paired fold differences, Nadeau &
  Bengio 2003): with a few dozen images the best of many candidates is partly luck;
* **similarity** follows: the data resembles the pretraining data when the top features alone
  are chosen; otherwise an earlier stage carries what the classes need;
* **the expected accuracy** of the chosen probe with an interval: the cross-validated accuracy
  less the selection bias of picking the best of many configurations (a bootstrap over the
  folds), +- 1.645 standard errors (of the k-fold mean, corrected for overlapping folds, and of
  the test set).

The features are returned with the report, so ``--recipe auto`` fits the winner from them with
no second pass over the images; :func:`plan_from` turns a report into the :class:`Plan` of
what to run.
"""

from __future__ import annotations

from tlkit.advise.candidates import (
    INTERVAL_Z,
    LARGE_TOTAL,
    SMALL_PER_CLASS,
    Candidate,
    choose,
    decide,
    expected_accuracy,
    feature_stages,
    score_candidates,
)
from tlkit.advise.measure import StageFeatures, measure, stage_features
from tlkit.advise.plan import Plan, plan_from
from tlkit.probe import stratified_folds

__all__ = [
    "INTERVAL_Z",
    "LARGE_TOTAL",
    "SMALL_PER_CLASS",
    "Candidate",
    "Plan",
    "StageFeatures",
    "choose",
    "decide",
    "expected_accuracy",
    "feature_stages",
    "measure",
    "plan_from",
    "score_candidates",
    "stage_features",
    "stratified_folds",
]
