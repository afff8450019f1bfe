//! Integration tests, in one binary (one link instead of one per file). Each module starts
//! its own SecantusDB servers and drives the real `strait` binary.

mod api;
mod archive;
mod bad_input;
mod common;
mod consumers;
mod crash;
mod ddl;
mod dynamodb;
mod dynamodb_mongo;
mod engine;
mod examples;
mod failover;
mod history_lost;
mod kafka;
mod kinesis;
mod replication;
mod serve;
mod tls;
mod two_way;
mod unique;
