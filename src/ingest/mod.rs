//! Ingest: from an accepted socket to a job on the writer's queue, and the answer back.
//!
//! In data-path order: [`listener`] accepts (connection cap, peer filter), [`connection`] runs
//! one coroutine per connection (sockets, waits, 100-continue, pipelining order, linger),
//! [`http`] frames requests (pure, sans-I/O), [`route`] finds the hook and checks the token,
//! [`decode`] decides what the body is, and [`response`] turns every outcome into bytes.
//! [`deadline`] is the sweeper thread that times out socket waits and commits; [`oneshot`] serves
//! the side listeners' one-request connections (admin, ACME `http-01`).

pub(crate) mod connection;
pub(crate) mod deadline;
pub mod decode;
pub mod gateway;
pub mod http;
pub(crate) mod listener;
pub(crate) mod oneshot;
pub(crate) mod response;
pub(crate) mod route;
