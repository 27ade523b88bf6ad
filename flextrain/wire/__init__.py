"""What trainers and the aggregator share on the wire: the token scheme, tensor
serialisation and small client helpers. Torch-free at import; `tensors` needs torch."""
