//! llm-feedback: records what end users think of LLM outputs.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin_export;
pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod feedback;
pub mod http;
pub mod store;
pub mod telemetry;
pub mod upkeep;
pub mod webhook;
pub mod worker;

pub use app::Application;
pub use commands::run;
