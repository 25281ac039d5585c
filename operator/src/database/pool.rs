//! Idle admin connections, kept for the next reconcile on the same server, database and
//! credentials. Opening one costs a TLS handshake, SCRAM and a backend process; a reconcile
//! needs one or two, and bindings on one server are reconciled in bursts (a create wave, a
//! resync), so at 1,000 bindings fresh connections were most of PostgreSQL's work.
//!
//! Only connections whose work finished cleanly come back (a failed step drops its
//! connection); they are used again within [`IDLE_TIMEOUT`] or closed, and at most
//! [`IDLE_PER_KEY`] wait per key. The key holds a hash of the password or token, so a rotated
//! password or a refreshed Entra token never reuses a connection opened with the old one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Connections kept idle per key (two per reconcile at the default concurrency of 4).
pub const IDLE_PER_KEY: usize = 8;
/// An idle connection not used again within this is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection was opened for and with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    host: String,
    port: u16,
    database: String,
    user: String,
    ssl_mode: String,
    credential: [u8; 32],
}

impl Key {
    pub fn new(
        host: &str,
        port: u16,
        database: &str,
        user: &str,
        password: &str,
        ssl_mode: &str,
    ) -> Self {
        Key {
            host: host.to_owned(),
            port,
            database: database.to_owned(),
            user: user.to_owned(),
            ssl_mode: ssl_mode.to_owned(),
            credential: Sha256::digest(password.as_bytes()).into(),
        }
    }
}

/// A connection that can tell whether its server hung up.
pub trait Connection {
    fn is_closed(&self) -> bool;
}

impl Connection for tokio_postgres::Client {
    fn is_closed(&self) -> bool {
        tokio_postgres::Client::is_closed(self)
    }
}

#[derive(Debug)]
pub struct Pool<C> {
    idle: Mutex<HashMap<Key, Vec<(Instant, C)>>>,
    per_key: usize,
    timeout: Duration,
}

impl<C: Connection> Pool<C> {
    pub fn new(per_key: usize, timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            per_key,
            timeout,
        }
    }

    /// The most recently returned open connection for `key`, if any.
    pub fn take(&self, key: &Key) -> Option<C> {
        let mut idle = self.idle.lock().ok()?;
        self.sweep(&mut idle, Instant::now());
        let list = idle.get_mut(key)?;
        let connection = list.pop().map(|(_, c)| c);
        if list.is_empty() {
            idle.remove(key);
        }
        connection
    }

    /// Keeps `connection` for the next [`Pool::take`] of `key` (or closes it when full).
    pub fn give(&self, key: Key, connection: C) {
        if connection.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        self.sweep(&mut idle, now);
        let list = idle.entry(key).or_default();
        if list.len() < self.per_key {
            list.push((now, connection));
        }
    }

    /// Idle connections, all keys.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Closes connections idle for longer than the timeout or closed by the server.
    fn sweep(&self, idle: &mut HashMap<Key, Vec<(Instant, C)>>, now: Instant) {
        idle.retain(|_, list| {
            list.retain(|(since, c)| now.duration_since(*since) < self.timeout && !c.is_closed());
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Debug)]
    struct Fake {
        id: u32,
        closed: Cell<bool>,
    }

    impl Connection for Fake {
        fn is_closed(&self) -> bool {
            self.closed.get()
        }
    }

    fn fake(id: u32) -> Fake {
        Fake {
            id,
            closed: Cell::new(false),
        }
    }

    fn key(database: &str, password: &str) -> Key {
        Key::new("pg", 5432, database, "admin", password, "require")
    }

    #[test]
    fn a_returned_connection_is_reused_for_the_same_server_database_and_credentials_only() {
        let pool = Pool::new(2, Duration::from_secs(30));
        pool.give(key("shop", "pw"), fake(1));
        assert!(pool.take(&key("other", "pw")).is_none());
        assert!(
            pool.take(&key("shop", "rotated")).is_none(),
            "a new password never gets a connection opened with the old one"
        );
        assert_eq!(pool.take(&key("shop", "pw")).map(|c| c.id), Some(1));
        assert!(pool.take(&key("shop", "pw")).is_none(), "taken once");
    }

    #[test]
    fn closed_expired_and_surplus_connections_are_not_kept() {
        let pool = Pool::new(2, Duration::from_secs(30));
        let closed = fake(1);
        closed.closed.set(true);
        pool.give(key("shop", "pw"), closed);
        assert_eq!(pool.idle(), 0);
        for id in 2..=4 {
            pool.give(key("shop", "pw"), fake(id));
        }
        assert_eq!(pool.idle(), 2, "at most per_key idle");
        // One closes while idle: it is skipped.
        if let Ok(idle) = pool.idle.lock() {
            idle[&key("shop", "pw")][1].1.closed.set(true);
        }
        assert_eq!(pool.take(&key("shop", "pw")).map(|c| c.id), Some(2));
        assert!(pool.take(&key("shop", "pw")).is_none());

        let expiring = Pool::new(2, Duration::ZERO);
        expiring.give(key("shop", "pw"), fake(5));
        assert!(expiring.take(&key("shop", "pw")).is_none(), "idle too long");
    }
}
