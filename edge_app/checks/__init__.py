"""Will the model work here, before it runs: the camera input against the training images
(`inputcheck`), the ops against each runtime release (`targets`, `op_versions.json`) and which ops a
delegate took (`placement`).

May import: the top-level modules (errors, runtime, model, ...), contract and frames.
"""
