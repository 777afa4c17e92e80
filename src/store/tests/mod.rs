//! The storage interface's tests, run against every backend: SQLite always, PostgreSQL when
//! `NATTER_TEST_POSTGRES_URL` names a server (CI sets it; without it each test says, once per
//! run, that the PostgreSQL variant was skipped).

use std::sync::{Arc, Once};

use super::postgres::{test_database, Postgres, TEST_URL_VAR};
use super::sqlite::Sqlite;
use super::Store;

mod directory;

mod history;

/// A backend under test; the directory holds SQLite's file and goes with it.
pub(super) struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh store of each backend available.
pub(super) fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = vec![Backend {
        name: "sqlite",
        store: Arc::new(Sqlite::open(dir.path()).expect("open sqlite")),
        _dir: Some(dir),
    }];
    match test_database() {
        Some(url) => all.push(Backend {
            name: "postgres",
            store: Arc::new(Postgres::open(&url).expect("open postgres")),
            _dir: None,
        }),
        None => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                eprintln!("SKIPPED: the PostgreSQL variants of the store tests ({TEST_URL_VAR} is not set)");
            });
        }
    }
    all
}
