"""TF-Slim backend: ``tf_slim.nets`` in a TF1 graph, trained the way slim's
``train_image_classifier.py`` does (arg_scope, trainable_scopes ->
variables_to_train, UPDATE_OPS, checkpoint_exclude_scopes).

Import ``backends.slim.backend`` for the class; ``backends.slim.compat``
installs the tf-keras import alias that tf_slim 1.1 needs on TF 2.21.
"""
