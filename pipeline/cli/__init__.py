"""`nin-pipeline`: thin click commands (`main`: build and its stages, evaluate; `choose`: compare / describe / sweep;
`ship`: edgetpu, check-target, clients, package) over plain
functions, their shared option types (`params`), and the one place an error becomes one line.

May import: anything in pipeline and edge_app; nothing imports it but `pipeline.__main__`.
"""
