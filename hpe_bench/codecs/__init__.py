"""Target codecs: a model's own label space <-> the schema's full-image / camera labels.

A codec is shared by the two sides of a model the way mmpose shares one between its data pipeline and its
head: ``encode(batch, inputs)`` turns schema labels into the model's targets (what its loss compares the raw
outputs with) and ``decode(out, inputs)`` turns the raw outputs back into schema predictions (what the metrics
read). ``inputs`` is the dict ``models.crop.CropInput`` returns (the crop ``A``, intrinsics ``K``, ``has_K``,
the crop image whose side is S). Codecs hold no rule of their own about crops, intrinsics or frames: those
come from ``hpe_bench.geometry``.

One module per model that needs one (OpNet: ``codecs.opnet``); models whose outputs already are schema
predictions (TRG, the direct-regression baseline) need none.
"""
