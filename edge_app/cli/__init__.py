"""`edge-app`: the click commands (`main`: run, bench, eval, info; `checks`: check-input,
check-target) and what they share (`common`: the model options, output files and the rule that an output is never
an input; `params`: the option types both CLIs use, such as finite floats and tokens).

May import: anything in edge_app; nothing imports it but `edge_app.__main__`.
"""
