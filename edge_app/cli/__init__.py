"""`edge-app`: the click commands (`main`: run, bench, eval, info; `checks`: check-input,
check-target) and what they share (`common`: the model options, output files).

May import: anything in edge_app; nothing imports it but `edge_app.__main__`.
"""
