"""Stage 1, data: datasets found on disk and read (`formats`: official archives, the Keras cache; `tree`:
`train/<class>/` image trees; `store`: their decoded-image cache), image collections that behave like arrays
(`arrays`), and the train / validation / test splits with their tf.data pipelines (`splits`).

May import: pipeline.errors, pipeline.progress and the device side (edge_app); nothing later in the flow.
"""
