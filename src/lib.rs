//! ClassGuard: an auditor for recorded online classes.
//!
//! Data flow: ingest → demux → slice (decode + sample) → audit (models) → verdict (policy) → sinks.
//! Each stage is a module with one job; stages exchange small typed values over bounded channels.

// `!(score >= threshold)` is deliberate throughout the model code: a NaN score must count as
// below the threshold, which `score < threshold` would not do.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod demux;
pub mod fault;
pub mod models;
pub mod mux;
pub mod slice;

pub mod app;
pub mod audit;
pub mod ingest;
pub mod inspect;
pub mod policy;
pub mod queue;
pub mod review;
pub mod service;
pub mod sink;
pub mod storage;
pub mod store;
pub mod verdict;
pub mod worker;
