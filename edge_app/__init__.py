"""edge_app: the device side of nin-pipeline.

Runs the int8 NiN model with numpy, OpenCV and a TFLite runtime (ai-edge-litert or
tflite-runtime) only. Nothing in this package imports TensorFlow or ``pipeline``;
the training side imports the sidecar schema from here, never the other way round.
"""

__version__ = "0.1.0"
