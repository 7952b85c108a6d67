//! Integration tests: the real binary, a real LMDB in a temp directory, raw sockets on
//! loopback. One test binary, modules by area.

mod sink;
mod util;

mod acme;
mod alerts;
mod appliance;
mod calls;
mod conformance;
mod console;
mod damage;
mod delivery_crash;
mod durability;
mod flood;
mod forward;
mod http_contract;
mod ingest;
mod nats;
mod powercut;
mod reader;
mod recordings;
mod reliability;
mod tls;
