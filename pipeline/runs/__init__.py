"""The run folder and what it was made with: every file a build writes, read and written only through
`folder.RunFolder` (atomic writes, `state.json`; the lock and a write that names its file in `lock`), the settings (`config`: `BuildConfig`, one
frozen dataclass per stage) and the named settings bundles (`profiles`).

May import: data, models, train, export (their per-stage settings), pipeline.errors and the device side.
"""
