//! Property: what a TLS client sends reaches the framer unchanged however TLS cuts it into
//! records and however the server reads them: framing the decrypted stream, as the connection
//! hands it over read by read, gives the same requests as framing the plaintext whole. And raw
//! bytes thrown at the server side of the handshake (didgate's own rustls configuration and
//! certificate resolver) end in an error, never a panic.
#![no_main]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use didgate::ingest::http::{Limits, Requests};
use didgate::tls::resolver::Resolver;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Raw bytes at the server before any handshake, instead of a client.
    raw: bool,
    /// Sizes of the client's writes (each becomes one or more records).
    writes: Vec<u16>,
    /// Sizes of the server's reads of decrypted bytes.
    reads: Vec<u16>,
    data: Vec<u8>,
}

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["fuzz.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let loaded =
            didgate::tls::certificate::parse(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .unwrap();
        let resolver = Arc::new(Resolver::default());
        resolver.install(loaded.key);
        let server = didgate::tls::server_config(resolver, true).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, Arc::new(client))
    })
}

fuzz_target!(|input: Input| {
    let (server_config, client_config) = configs();
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    if input.raw {
        let mut bytes = &input.data[..];
        while !bytes.is_empty() {
            match server.read_tls(&mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if server.process_new_packets().is_err() {
                        return;
                    }
                }
            }
        }
        return;
    }
    let name = ServerName::try_from("fuzz.test").unwrap();
    let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
    let mut wire = Vec::new();
    let mut exchange = |client: &mut ClientConnection, server: &mut ServerConnection| {
        for _ in 0..16 {
            wire.clear();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut r = &wire[..];
            while !r.is_empty() {
                server.read_tls(&mut r).unwrap();
                server.process_new_packets().unwrap();
            }
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut r = &wire[..];
            while !r.is_empty() {
                client.read_tls(&mut r).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
                return;
            }
        }
        panic!("the in-memory handshake did not finish");
    };
    exchange(&mut client, &mut server);

    let limits = Limits { max_head_bytes: 256, max_headers: 4, max_body_bytes: 64 };
    let mut whole = Vec::new();
    Requests::new(limits).push(&input.data, &mut whole);

    let mut pos = 0;
    for w in input.writes.iter().chain(std::iter::once(&u16::MAX)) {
        let n = usize::from(*w).min(input.data.len() - pos);
        client.writer().write_all(&input.data[pos..pos + n]).unwrap();
        pos += n;
    }
    exchange(&mut client, &mut server);
    let mut framer = Requests::new(limits);
    let mut split = Vec::new();
    let mut reads = input.reads.iter().cycle();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let want = reads.next().map_or(buf.len(), |r| usize::from(*r).max(1));
        match server.reader().read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => framer.push(&buf[..n], &mut split),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading decrypted data: {e}"),
        }
    }
    framer.push(&[], &mut split);
    assert_eq!(whole, split, "TLS records changed the framing");
});
