"""Stage 4, export: quantisation-aware training and TFLite conversion (`convert`), where int8 loses
(`quant_debug`), the Edge TPU compiler wrapper (`edgetpu`) and the device bundle (`bundle`).

May import: the stages before it (data, models, train), pipeline.errors and the device side (edge_app);
never the run folder or the report.
"""
