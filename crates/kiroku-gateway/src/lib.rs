//! Public gRPC gateway.
