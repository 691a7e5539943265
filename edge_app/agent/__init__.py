"""The device agent: `edge-app agent` serves this device's runtime over HTTP so that a host can measure
its models here (`protocol`: the routes, the jobs and their options, the replies — the contract both
sides keep; `server`: the agent; `jobs`: one job in a child process with a time limit; `cache`: the
models it holds; `client`: what the host uses, standard library only).

May import: everything before it (contract ... measure) and the top-level modules. Imported by the CLI,
and by the training side's device commands (pipeline.choose.device, through `client` and `protocol`).
"""
