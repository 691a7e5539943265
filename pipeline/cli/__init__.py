"""`nin-pipeline`: thin click commands (`main`, and `choose` for compare / describe / sweep) over plain
functions, their shared option types (`params`), and the one place an error becomes one line.

May import: anything in pipeline and edge_app; nothing imports it but `pipeline.__main__`.
"""
