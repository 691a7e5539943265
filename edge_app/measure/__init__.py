"""Measuring on the device: invoke-only and whole-loop speed (`bench`) and accuracy on a labelled
folder through the device's own runtime and preprocessing (`evaluate`).

May import: everything before it (contract ... camera); never the CLI.
"""
