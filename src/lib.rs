//! Gantry: one secure, observable endpoint in front of many MCP servers.

pub mod admin;
pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod demo_upstream;
pub mod doctor;
pub mod gateway;
pub mod healthcheck;
pub mod http_server;
pub mod identity;
pub mod policy;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod vault;
