//! HTTP: the JSON API router shared by every node ([`api`]), who may call it ([`access`]) and
//! the accept loop ([`serve`]).

pub mod access;
pub mod api;
pub mod client;
pub mod serve;
