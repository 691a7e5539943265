"""Stage 5, report: predictions of Keras and TFLite models (`predict`), the float-vs-int8 figures
(`figures`), their table, markdown and HTML (`render`) and PNGs (`plots`), the clients check (`clients`:
MediaPipe, Task Library) and what a run folder records once its models exist (`records`).

May import: everything before it (data ... runs) and the device side; never the orchestration or the CLI.
"""
