"""Generated gRPC/protobuf stubs of proto/flextrain/v1 (checked in; a test fails when stale)."""
