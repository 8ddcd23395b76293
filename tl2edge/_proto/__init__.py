"""Generated protobuf and gRPC code: written by `make protos`, never edited by hand."""
