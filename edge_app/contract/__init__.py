"""The contract between the two sides: which files a run folder holds and which model it means
(`files`), and the `model.json` sidecar's schema, reader and writer (`sidecar`). The training side
imports this; nothing here knows how a model was trained.

May import: edge_app.errors and edge_app.fsutil only (no numpy, no runtime).
"""
