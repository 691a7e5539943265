"""The camera loop (`loop`: frame -> input -> invoke -> top-k -> JSON line), annotated frames for a
window or a video file (`draw`) and the loopback preview (`serve`, its page in `page`).

May import: everything before it (contract, frames, model, checks) and the top-level modules.
"""
