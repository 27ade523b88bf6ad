"""Generated stubs of flextrain.v1 (tools/gen_proto.py)."""
