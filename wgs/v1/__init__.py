"""Generated protobuf and gRPC code for wgs.v1 (do not edit)."""
