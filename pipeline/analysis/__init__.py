"""Weight-free degradation analysis: which degradations an image carries and how strong they are.

``estimators`` holds the classical no-reference measurements, ``features`` turns an image into the
fixed feature vector, ``classifier`` is the small numpy model trained on synthetic degradations
(``train``), ``analyze`` returns the ``Analysis`` of one image and ``evaluate`` scores it (and any
other describer) on a labelled set.
"""
