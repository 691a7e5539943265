"""Stage 2, models: the architecture registry `ARCHS` and Network-in-Network itself (`nin`), the seed
architectures it is compared with (`zoo`), and what they are built from (`layers`: `ModelConfig`, the
QAT-friendly Conv-BN-ReLU, FC and GAP heads). Definitions only: nothing here trains.

May import: pipeline.errors; nothing later in the flow (models know nothing of data or training).
"""
