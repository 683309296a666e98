//! HTTP: the JSON API router shared by every node ([`api`]) and the accept loop ([`serve`]).

pub mod api;
pub mod client;
pub mod serve;
