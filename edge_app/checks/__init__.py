"""Will the model work here, before it runs: the camera input against the training images
(`inputcheck`), the ops against each runtime release (`targets`, `op_versions.json`; its reader is the
one list of a model's ops), the ops against the Edge TPU's rules (`edgetpu`) and which ops a delegate
took (`placement`).

May import: the top-level modules (errors, runtime, model, ...), contract and frames.
"""
