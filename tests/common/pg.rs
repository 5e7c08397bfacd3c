//! A PostgreSQL database of a test's own on the machine's server (127.0.0.1:5432, trust auth;
//! scripts/setup starts it), dropped afterwards.

pub struct PgDb {
    pub name: String,
    pub url: String,
}

const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

impl PgDb {
    /// A fresh, empty database named after `prefix`, this process and a counter.
    pub fn new(prefix: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "cg_{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut admin = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls)
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/setup starts it)");
        // One statement per call: several in one batch run as one transaction, which
        // DROP/CREATE DATABASE refuse.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
