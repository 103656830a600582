//! Integration tests: one binary, one module per area. Brokers run on 127.0.0.1 with free
//! ports and temporary data directories; clients use the real SDK over QUIC.
#![allow(unreachable_pub)]

mod auth;
mod broker;
mod browser;
mod cli;
mod cluster;
mod cluster_routes;
mod console;
mod damage;
mod dev_cluster;
mod examples;
mod failover;
mod filters;
mod groups;
mod harness;
mod messaging;
mod metrics;
mod ordered;
mod plugins;
mod raw_frames;
mod reader;
mod reconnect;
mod replication;
mod serve_process;
mod store_crash;
