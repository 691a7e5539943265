"""The orchestration: the stages of one build (`steps`: train, QAT, convert, evaluate), running
them in order with resume and redo (`orchestrator`), what the stages train on (`inputs`), whether
this machine can hold it (`budget`), and training on several machines (`cluster`: TF_CONFIG,
MultiWorkerMirroredStrategy, the chief).

May import: every stage before it (data ... report); never the choosing commands or the CLI.
"""
