//! Gantry: one secure, observable endpoint in front of many MCP servers.

pub mod cli;
pub mod config;
pub mod demo_upstream;
pub mod doctor;
pub mod gateway;
pub mod healthcheck;
pub mod startup;
pub mod telemetry;
pub mod upstream;
