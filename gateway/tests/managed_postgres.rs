//! Managed-database settings: TLS with every sslmode that matters, client
//! certificates, the password file, the key/value form, several hosts, and
//! a failover to a promoted standby — against private PostgreSQL servers
//! that accept TLS only, and against the shared one (which has TLS on).

mod common;

use common::cluster::wait_listen_backends;
use common::pg_server::{PgServer, ServerTls, PASSWORD};
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn base_dir() -> PathBuf {
    std::env::temp_dir().join(unique("pgws-pg"))
}

/// A TLS-only server whose certificate names `names`.
async fn tls_server(names: &[&str]) -> (ServerTls, PgServer) {
    let base = base_dir();
    let tls = ServerTls::new(&base.join("pki"), names);
    let server = PgServer::start(&tls, &base).await;
    (tls, server)
}

/// A gateway on `uri` that retries for a while, self-heals quickly.
fn gateway_on(uri: &str) -> ServerBuilder {
    Server::gateway()
        .env("PGWS_DB_URI", uri)
        .env("PGWS_CHECK_LISTENER_INTERVAL", "500")
}

/// The full round trip through the database: an `rw` socket's message
/// becomes a NOTIFY, comes back through the LISTEN and reaches it.
async fn assert_round_trip(gw: &Server) {
    let t = token(json!({"mode": "rw"}));
    let mut ws = connect(&gw.url(&format!("chat/{t}"))).await;
    let text = unique("round-trip");
    send(&mut ws, &text).await;
    let v: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
    assert_eq!(v["payload"], text.as_str());
    assert_eq!(v["event"], "WebsocketMessage");
}

/// A notification sent on `server` reaches a reader on `gw`. Each call has
/// its own channel: gateways sharing a listen channel all receive every
/// notification, and one that arrives late at another gateway must not
/// reach the next call's reader.
async fn assert_delivers(gw: &Server, server: &PgServer) {
    let t = token(json!({"mode": "r"}));
    let channel = unique("news");
    let mut ws = connect(&gw.url(&format!("{channel}/{t}"))).await;
    let db = server.client().await;
    let payload = json!({"channel": channel, "payload": unique("n")}).to_string();
    notify(&db, &gw.listen_channel, &payload).await;
    assert_eq!(next_text(&mut ws).await, payload);
}

/// A gateway expected to give up on the database: its exit code and log.
async fn failing(builder: ServerBuilder) -> (Option<i32>, String) {
    let mut gw = builder.env("PGWS_RETRIES", "0").no_wait().start().await;
    let status = gw.wait_exit(WAIT).await;
    (status.code(), gw.log_text())
}

#[tokio::test]
async fn sslmode_require_encrypts_the_listener_and_the_writes_on_the_shared_server() {
    let uri = format!(
        "{}{}sslmode=require",
        db_uri(),
        if db_uri().contains('?') { "&" } else { "?" }
    );
    let gw = gateway_on(&uri).start().await;
    let db = db().await;
    wait_listen_backends(&db, &gw.listen_channel, 1).await;
    let ssl: bool = db
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.query = $1",
            &[&format!("LISTEN \"{}\"", gw.listen_channel)],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the LISTEN backend is not encrypted");
    assert_round_trip(&gw).await;
    let unencrypted: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'pgws notify' AND NOT s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(unencrypted, 0, "a NOTIFY connection is not encrypted");
}

#[tokio::test]
async fn a_tls_only_server_refuses_plain_and_serves_require() {
    let (_tls, server) = tls_server(&["localhost", "127.0.0.1"]).await;
    let (code, log) = failing(gateway_on(
        &server.conninfo("user=postgres sslmode=disable"),
    ))
    .await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("no encryption"),
        "the reason is logged:\n{log}"
    );

    let gw = gateway_on(&server.conninfo("user=postgres sslmode=require"))
        .start()
        .await;
    assert_round_trip(&gw).await;
    assert_delivers(&gw, &server).await;
    // libpq's default (prefer) takes TLS when the server offers it.
    let gw = gateway_on(&server.conninfo("user=postgres")).start().await;
    assert_round_trip(&gw).await;
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    // The certificate names localhost, not 127.0.0.1.
    let (tls, server) = tls_server(&["localhost"]).await;
    let ca = tls.pki.ca.display().to_string();
    let at = |host: &str, extra: &str| {
        format!(
            "host={host} port={} dbname=postgres user=postgres {extra}",
            server.port
        )
    };

    let gw = gateway_on(&at(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ))
    .start()
    .await;
    assert_round_trip(&gw).await;
    drop(gw);

    let (code, log) = failing(gateway_on(&at(
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    )))
    .await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("does not name the host connected to"),
        "a wrong host name is named as the cause:\n{log}"
    );

    let other = common::certs::Pki::new(&base_dir(), "other");
    let (code, log) = failing(gateway_on(&at(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", other.ca.display()),
    )))
    .await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("not signed by a CA in sslrootcert"),
        "an unknown CA is named as the cause:\n{log}"
    );

    // verify-ca checks the chain only: the address is fine.
    let gw = gateway_on(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={ca}"),
    ))
    .start()
    .await;
    assert_round_trip(&gw).await;

    // No root certificate at all: a configuration error at start-up.
    let out = gateway_on(&at("localhost", "sslmode=verify-full"))
        .command()
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("PGWS_DB_URI") && stderr.contains("sslrootcert"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_client_certificate_and_a_password_file_authenticate() {
    let (tls, server) = tls_server(&["localhost", "127.0.0.1"]).await;
    let client = tls.pki.issue("certuser", "certuser", &[]);
    let gw = gateway_on(&server.conninfo(&format!(
        "user=certuser sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        tls.pki.ca.display(),
        client.cert.display(),
        client.key.display()
    )))
    .start()
    .await;
    assert_round_trip(&gw).await;
    drop(gw);

    // The key/value form, and the password from PGPASSFILE (escaped ':').
    let passfile = base_dir().with_extension("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:postgres:pwuser:{}\n",
            server.port,
            PASSWORD.replace('\\', "\\\\").replace(':', "\\:")
        ),
    )
    .expect("pgpass");
    common::certs::set_mode(&passfile, 0o600);
    let uri = server.conninfo("user=pwuser sslmode=require");
    let (code, log) = failing(gateway_on(&uri)).await;
    assert_eq!(code, Some(1), "no password, no entry: {log}");
    let gw = gateway_on(&uri)
        .env("PGPASSFILE", passfile.display().to_string())
        .start()
        .await;
    assert_round_trip(&gw).await;
    let _ = std::fs::remove_file(&passfile);
}

#[tokio::test]
async fn the_second_host_is_used_when_the_first_is_down() {
    let (_tls, server) = tls_server(&["localhost", "127.0.0.1"]).await;
    let down = free_port();
    let gw = gateway_on(&format!(
        "postgresql://postgres@127.0.0.1:{down},127.0.0.1:{}/postgres?sslmode=require",
        server.port
    ))
    .start()
    .await;
    assert_delivers(&gw, &server).await;
    assert_round_trip(&gw).await;
}

/// Times the log has said `needle`, and when each was first seen.
async fn wait_occurrences(gw: &Server, needle: &str, n: usize, within: Duration) -> Vec<Instant> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let count = gw.log_text().matches(needle).count();
        while seen.len() < count {
            seen.push(Instant::now());
        }
        if seen.len() >= n {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} seen {} times, wanted {n}:\n{}",
            seen.len(),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_standby_is_skipped_backed_off_and_taken_once_promoted() {
    let (_tls, mut primary) = tls_server(&["localhost", "127.0.0.1"]).await;
    let standby = primary.standby().await;
    let listen_channel = unique("pgws-failover");

    // Both hosts, standby first: read-write picks the primary.
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres sslmode=require target_session_attrs=read-write",
        standby.port, primary.port
    );
    let gw = gateway_on(&both)
        .env("PGWS_LISTEN_CHANNEL", &listen_channel)
        .start()
        .await;
    let listening = |server: &PgServer| {
        server.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"{listen_channel}\"'"
        ))
    };
    assert_eq!(listening(&primary), "1");
    assert_delivers(&gw, &primary).await;

    // The standby alone: LISTEN fails there, and is retried with backoff,
    // never in a tight loop.
    let stuck = gateway_on(&standby.conninfo("user=postgres sslmode=require"))
        .env("PGWS_LISTEN_CHANNEL", &listen_channel)
        .env("PGWS_RETRIES", "100")
        .no_wait()
        .start()
        .await;
    let refusals = wait_occurrences(&stuck, "cannot execute LISTEN during recovery", 3, WAIT).await;
    let spread = refusals[2] - refusals[0];
    assert!(
        spread >= Duration::from_millis(2500),
        "three attempts within {spread:?}: not backing off (1 s, then 2 s)"
    );

    // A managed failover: the primary goes, the standby is promoted.
    primary.stop();
    standby.promote();
    let deadline = Instant::now() + WAIT * 2;
    while listening(&standby) != "2" {
        assert!(
            Instant::now() < deadline,
            "both gateways should LISTEN on the promoted server:\n{}\n---\n{}",
            gw.log_text(),
            stuck.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_delivers(&gw, &standby).await;
    assert_delivers(&stuck, &standby).await;
    assert_round_trip(&gw).await;
}
