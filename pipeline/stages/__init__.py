"""The orchestration: one build as stages (`orchestrator`: train -> QAT -> convert -> evaluate, resume,
redo), what the stages train on (`inputs`), and training on several machines (`cluster`: TF_CONFIG,
MultiWorkerMirroredStrategy, the chief).

May import: every stage before it (data ... report); never the choosing commands or the CLI.
"""
