//! pytest-mcp: records pytest runs streamed over gRPC into SQLite and serves
//! them to people (CLI, grpcurl) and AI agents (MCP).
//!
//! The binary is a thin shell over this library so integration tests can run
//! the same server on a `127.0.0.1:0` listener.

pub mod app;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod conn;
pub mod error;
pub mod export;
pub mod grpc;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod rootdir;
pub mod spool;
pub mod store;
pub mod tls;
pub mod views;
pub mod watch;
pub mod web;
