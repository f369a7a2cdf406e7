//! PostgreSQL schemas of a test's own in the test database, for the unit
//! tests and (through the test-hooks feature) the binary's integration
//! tests.

#![allow(clippy::expect_used)]

/// The test database: PostgreSQL on 127.0.0.1:5432, trust auth, database `test`.
pub const POSTGRES_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// Drops schema `name` and everything in it. Runs on a small runtime of its
/// own, since a test's runtime is gone by the time its guard drops.
pub fn drop_schema(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            if let Ok((client, connection)) =
                tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await
            {
                #[expect(
                    clippy::disallowed_methods,
                    reason = "test support: the connection lives as long as the test's runtime"
                )]
                tokio::spawn(connection);
                // Never wait forever on a lock a dying connection still holds.
                let drop = format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE");
                let _ = client.batch_execute(&drop).await;
            }
        });
    })
    .join();
}
