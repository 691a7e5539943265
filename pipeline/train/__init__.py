"""Stage 3, training: a generic Keras training driver (`fit`: schedule, BackupAndRestore, resume) that
knows nothing of NiN, and the devices it runs on (`devices`: GPUs, else the usable CPU cores).

May import: pipeline.errors, pipeline.progress, data, models and the device side.
"""
