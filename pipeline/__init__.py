"""nin-pipeline, training side: NiN in tf_keras, quantisation-aware training, int8 TFLite.

Importing this package imports no TensorFlow: heavy imports live inside the functions that
need them. The command-line entry point (``pipeline.cli.main:main``) sets TF_USE_LEGACY_KERAS=1
before TensorFlow is first imported, so ``tf_keras`` (Keras 2, which tfmot needs) is used.
"""

__version__ = "0.1.0"
