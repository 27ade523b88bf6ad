"""What trainers and the aggregator share on the wire: the token scheme (`auth`), the
protocol's messages as plain Python (`messages`) and their protobuf pairs (`serde`),
tensor payloads and the one table of wire dtypes (`tensors`), hand-framed data chunks
(`frames`) and the torch-free GetStatus client (`status`). Torch-free at import;
`tensors`, `messages` and `serde` need torch."""
